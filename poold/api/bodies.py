"""Request bodies, validated at the edge with messages a person can act on."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from poold.config import Loc, explain
from poold.data.kafka import MAX_RECORD_BYTES


class LimitsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)] | None = None
    memory_mb: Annotated[StrictInt, Field(ge=1)] | None = None
    fuel: Annotated[StrictInt, Field(ge=1, le=2**64 - 1)] | None = None
    """wasmtime counts fuel in an unsigned 64-bit integer; a larger value would wrap."""


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    module: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None
    runtime: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None
    script: StrictStr | None = None
    """With ``runtime``: the program the interpreter runs (its size cap is the runtime's)."""
    args: Annotated[list[StrictStr], Field(max_length=1000)] = []
    env: dict[Annotated[StrictStr, Field(pattern=r"^[^=\x00]+$")], StrictStr] = {}
    input: list[StrictStr] = []
    limits: LimitsRequest = LimitsRequest()

    @model_validator(mode="after")
    def _module_or_runtime(self) -> JobRequest:
        if self.module is None and self.runtime is None:
            raise ValueError("module is required: name a module (a sha256 from PUT "
                             "/v1/modules) or a runtime (GET /v1/runtimes lists them)")
        if self.module is not None and self.runtime is not None:
            raise ValueError("name a module or a runtime, not both")
        if self.script is not None and self.runtime is None:
            raise ValueError("script needs a runtime to run it (GET /v1/runtimes lists them)")
        if self.script is not None and "\x00" in self.script:
            raise ValueError("script contains a NUL character; send it as text")
        return self

    @field_validator("args")
    @classmethod
    def _no_nul_in_args(cls, args: list[str]) -> list[str]:
        for i, arg in enumerate(args):
            if "\x00" in arg:
                raise ValueError(f"argument {i} contains a NUL character, which ends a "
                                 "program's argument: the module would see less than was sent")
        return args

    @field_validator("env")
    @classmethod
    def _no_nul_in_env_values(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            if "\x00" in value:
                raise ValueError(f"the value of {key} contains a NUL character, which ends an "
                                 "environment variable: the module would see less than was sent")
        return env

    @field_validator("input")
    @classmethod
    def _one_line_each(cls, records: list[str]) -> list[str]:
        for i, record in enumerate(records):
            if "\n" in record:
                raise ValueError(
                    f"record {i} contains a newline; each input record becomes one line of "
                    "the module's stdin, so split it into several records"
                )
            size = len(record.encode("utf-8", "surrogatepass"))
            if size > MAX_RECORD_BYTES:
                raise ValueError(
                    f"record {i} is {size} bytes; a record is at most {MAX_RECORD_BYTES} bytes "
                    "(a Kafka message), so split it into several records"
                )
        return records


def describe(error: ValidationError) -> str:
    """One sentence per problem, naming the field: ``limits.timeout_s: ...``."""
    def unknown(loc: Loc) -> str:
        allowed = ("timeout_s, memory_mb, fuel" if loc[:1] == ("limits",)
                   else "module, runtime, script, args, env, input, limits")
        return f"unknown field (allowed: {allowed})"

    sentences = explain(error, messages={"extra_forbidden": unknown,
                                         "model_type": lambda _: "must be a JSON object"})
    return "invalid job: " + "; ".join(sentences[:5])


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(body: Any) -> str | None:
    """Where the parsed JSON holds half of a UTF-16 surrogate pair, if anywhere.

    JSON's ``\\uD800`` escapes can spell one half of a pair, which is no character
    at all: Python keeps it in the string, but it cannot be encoded as UTF-8 for the
    module's args, env or stdin. Walks with a stack, not recursion."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return where or "body"
        elif isinstance(item, dict):
            for key, value in item.items():
                if _SURROGATE.search(key):
                    return f"{where or 'body'}: a name"
                stack.append((f"{where}.{key}" if where else key, value))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", value) for i, value in enumerate(item))
    return None
