/* The languages benchmark's timing helpers, shared by its C workloads. */
#ifndef BENCH_STAMP_H
#define BENCH_STAMP_H

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

#endif
