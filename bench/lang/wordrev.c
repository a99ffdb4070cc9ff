/* Data-bound workload of the languages benchmark (bench/languages.py): read records
 * (lines) from stdin and write each one with its words (separated by single spaces)
 * in reverse order, then a summary line "records R words W bytes B". wordrev.py is
 * the same program in Python. Built for wasm32-wasi (build.sh) and natively. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_LINE (1 << 20)
#define MAX_WORDS (1 << 16)

#include "stamp.h"

int main(void) {
    stamp();
    static char line[MAX_LINE];
    static char *words[MAX_WORDS];
    long records = 0, nwords = 0, bytes = 0;
    while (fgets(line, sizeof line, stdin) != NULL) {
        size_t len = strlen(line);
        if (len > 0 && line[len - 1] == '\n') {
            line[--len] = '\0';
        }
        records++;
        bytes += (long)len;
        int count = 0;
        char *p = line;
        words[count++] = p;
        while ((p = strchr(p, ' ')) != NULL && count < MAX_WORDS) {
            *p++ = '\0';
            words[count++] = p;
        }
        nwords += count;
        for (int i = count - 1; i >= 0; i--) {
            fputs(words[i], stdout);
            putchar(i > 0 ? ' ' : '\n');
        }
    }
    printf("records %ld words %ld bytes %ld\n", records, nwords, bytes);
    fflush(stdout);
    peak();
    return 0;
}
