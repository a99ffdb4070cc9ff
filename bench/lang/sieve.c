/* CPU-bound workload of the languages benchmark (bench/languages.py): count the
 * primes below N (argument 1, default 1000000) with the sieve of Eratosthenes,
 * written with plain loops so that sieve.py can be the same program line by line.
 * Prints "primes below N: COUNT". Built for wasm32-wasi (build.sh) and natively. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void stamp(void) {
    /* BENCH_STAMP set (the native baseline only): print when main() began
     * (CLOCK_REALTIME, ns) to stderr, so the bench can time the process's start. */
    if (getenv("BENCH_STAMP") != NULL) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        fprintf(stderr, "main %lld\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    }
}

static void peak(void) {
    /* BENCH_STAMP set: print this process's peak resident memory (VmHWM, KiB) to
     * stderr. wait4's ru_maxrss cannot be used: it carries over the spawning
     * process's peak across exec. Nothing is printed where /proc is not there (WASI). */
    if (getenv("BENCH_STAMP") == NULL) {
        return;
    }
    FILE *status = fopen("/proc/self/status", "r");
    if (status == NULL) {
        return;
    }
    char line[256];
    while (fgets(line, sizeof line, status) != NULL) {
        if (strncmp(line, "VmHWM:", 6) == 0) {
            fprintf(stderr, "peak_kib %ld\n", atol(line + 6));
        }
    }
    fclose(status);
}

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
