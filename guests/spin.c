// Hostile: loops forever without ever calling the host.
int main(void) {
    volatile unsigned long n = 0;
    for (;;) n++;
}
