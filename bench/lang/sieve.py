# CPU-bound workload of the languages benchmark: sieve.c, line by line, in Python.
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
if n < 2:
    print(f"primes below {n}: 0")
    sys.exit(0)
composite = bytearray(n)
i = 2
while i * i < n:
    if not composite[i]:
        j = i * i
        while j < n:
            composite[j] = 1
            j += i
    i += 1
count = 0
i = 2
while i < n:
    if not composite[i]:
        count += 1
    i += 1
print(f"primes below {n}: {count}")
