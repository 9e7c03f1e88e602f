// A SQLite workload on a database file in a preopened directory, for migration tests
// (built with SQLite's amalgamation, see tern-bench's sqlite module). Arguments: DB ROWS
// WORK. Inserts ROWS rows, each in its own committed transaction with some computation
// in between, printing "committed N" after each commit; then checks that every row is
// there and prints their count and sum. The database stays open the whole time.
#include <stdio.h>
#include <stdlib.h>
#include "sqlite3.h"

static unsigned long long spin(unsigned long long x, unsigned long long n) {
    for (unsigned long long i = 0; i < n; i++)
        x = x * 6364136223846793005ULL + (x >> 17) + i;
    return x;
}

static void check(int rc, sqlite3 *db, const char *what) {
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        printf("FAIL %s: %s\n", what, sqlite3_errmsg(db));
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: sqlite_rows DB ROWS WORK\n"); return 2; }
    int rows = atoi(argv[2]);
    unsigned long long work = strtoull(argv[3], 0, 10);
    sqlite3 *db;
    check(sqlite3_open(argv[1], &db), db, "open");
    check(sqlite3_exec(db, "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)",
                       0, 0, 0), db, "create");
    sqlite3_stmt *ins;
    check(sqlite3_prepare_v2(db, "INSERT INTO t(id, v) VALUES(?, ?)", -1, &ins, 0), db, "prepare");
    unsigned long long acc = 1;
    char text[64];
    for (int i = 0; i < rows; i++) {
        acc = spin(acc, work);
        snprintf(text, sizeof text, "%016llx", acc);
        check(sqlite3_exec(db, "BEGIN", 0, 0, 0), db, "begin");
        sqlite3_bind_int(ins, 1, i);
        sqlite3_bind_text(ins, 2, text, -1, SQLITE_TRANSIENT);
        check(sqlite3_step(ins), db, "insert");
        sqlite3_reset(ins);
        check(sqlite3_exec(db, "COMMIT", 0, 0, 0), db, "commit");
        printf("committed %d\n", i);
        fflush(stdout);
    }
    sqlite3_finalize(ins);
    sqlite3_stmt *q;
    check(sqlite3_prepare_v2(db, "SELECT count(*), sum(id) FROM t", -1, &q, 0), db, "select");
    check(sqlite3_step(q), db, "step");
    printf("rows %d sum %lld\n", sqlite3_column_int(q, 0), sqlite3_column_int64(q, 1));
    sqlite3_finalize(q);
    sqlite3_close(db);
    return 0;
}
