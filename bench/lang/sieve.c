/* CPU-bound workload of the languages benchmark (bench/languages.py): count the
 * primes below N (argument 1, default 1000000) with the sieve of Eratosthenes,
 * written with plain loops so that sieve.py can be the same program line by line.
 * Prints "primes below N: COUNT". Built for wasm32-wasi (build.sh) and natively. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "stamp.h"

int main(int argc, char **argv) {
    stamp();
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    if (n < 2) {
        printf("primes below %ld: 0\n", n);
        return 0;
    }
    unsigned char *composite = calloc((size_t)n, 1);
    if (composite == NULL) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (long i = 2; i * i < n; i++) {
        if (!composite[i]) {
            for (long j = i * i; j < n; j += i) {
                composite[j] = 1;
            }
        }
    }
    long count = 0;
    for (long i = 2; i < n; i++) {
        if (!composite[i]) {
            count++;
        }
    }
    printf("primes below %ld: %ld\n", n, count);
    free(composite);
    fflush(stdout);
    peak();
    return 0;
}
