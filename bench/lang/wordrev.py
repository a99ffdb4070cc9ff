# Data-bound workload of the languages benchmark: wordrev.c in Python.
import sys

records = words = size = 0
out = sys.stdout
for raw in sys.stdin:
    record = raw.removesuffix("\n")
    records += 1
    size += len(record.encode())
    parts = record.split(" ")
    words += len(parts)
    out.write(" ".join(reversed(parts)) + "\n")
print(f"records {records} words {words} bytes {size}")
