// Counts words in the files named on the command line and writes the ten most frequent
// to the report file given first: `wordfreq REPORT FILE...`. A small, real WASI program
// for Tern's demo: it reads from a read-only preopen and writes to a read-write one.
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WORD 32
#define TABLE (1 << 14)

struct entry { char word[MAX_WORD]; unsigned count; };
static struct entry table[TABLE];
static unsigned distinct, total;

static void add(const char *w) {
    unsigned h = 2166136261u;
    for (const char *p = w; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    for (unsigned i = h & (TABLE - 1);; i = (i + 1) & (TABLE - 1)) {
        if (!table[i].count) {
            if (distinct == TABLE - 1) return;
            strcpy(table[i].word, w);
            table[i].count = 1;
            distinct++;
            return;
        }
        if (!strcmp(table[i].word, w)) { table[i].count++; return; }
    }
}

static int by_count(const void *a, const void *b) {
    const struct entry *x = a, *y = b;
    if (x->count != y->count) return x->count < y->count ? 1 : -1;
    return strcmp(x->word, y->word);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: wordfreq REPORT FILE...\n"); return 2; }
    for (int f = 2; f < argc; f++) {
        FILE *in = fopen(argv[f], "r");
        if (!in) { fprintf(stderr, "wordfreq: %s: %s\n", argv[f], strerror(errno)); return 1; }
        char w[MAX_WORD];
        size_t n = 0;
        int c;
        while ((c = fgetc(in)) != EOF) {
            if (isalpha(c)) {
                if (n < MAX_WORD - 1) w[n++] = (char)tolower(c);
            } else if (n) {
                w[n] = 0;
                if (n > 3) { add(w); total++; }
                n = 0;
            }
        }
        fclose(in);
    }
    qsort(table, TABLE, sizeof table[0], by_count);
    FILE *out = fopen(argv[1], "w");
    if (!out) { fprintf(stderr, "wordfreq: %s: %s\n", argv[1], strerror(errno)); return 1; }
    fprintf(out, "%u words longer than three letters, %u distinct\n", total, distinct);
    for (int i = 0; i < 10 && table[i].count; i++)
        fprintf(out, "%6u  %s\n", table[i].count, table[i].word);
    fclose(out);
    printf("wordfreq: counted %u words in %d files, report written to %s\n", total, argc - 2, argv[1]);
    return 0;
}
