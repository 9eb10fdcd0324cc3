"""A pipeline's own code: row checks (polars expressions or ``module:function``) and transforms
(``module:function``, a DataFrame in, a DataFrame out), loaded, versioned and called safely.

- Loading: user modules are imported from the workspace directory and the pipeline's
  ``python_path``; :func:`check_spec` does it when the configuration loads, so a missing module
  or function fails there, naming the key.
- Versions: :func:`code_version` is mrbatch's version plus the SHA-256 of the source file of
  every module the pipeline calls. A run pins it at claim; a worker compares it with the code it
  has loaded (re-importing once when they differ) and refuses to run other code, so one output
  never mixes two versions.
- Calling: every call is bounded by the pipeline's ``timeout``; an exception, a timeout or a
  result of the wrong shape becomes a :class:`~mrbatch.errors.UserCodeError` whose message is
  the reason the chunk (and the run) fails with. It is never retried: the same code on the same
  rows would fail again.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from .. import __version__
from ..config.pipelines import PipelineSpec
from ..errors import UserCodeError

__all__ = [
    "Rules",
    "call_bounded",
    "check_spec",
    "code_version",
    "compile_expr",
    "load_rules",
]


def _add_paths(root: Path, python_path: list[str]) -> None:
    for entry in [str(root), *(str((root / p).resolve()) for p in python_path)]:
        if entry not in sys.path:
            sys.path.insert(0, entry)


def compile_expr(text: str) -> pl.Expr:
    """A row check's expression: Python text over ``pl`` only (no builtins), a polars Expr."""
    try:
        value = eval(compile(text, "<check>", "eval"), {"pl": pl, "__builtins__": {}}, {})
    except Exception as exc:
        raise ValueError(f"{text!r} is not a polars expression: {exc}") from exc
    if not isinstance(value, pl.Expr):
        raise ValueError(f"{text!r} is a {type(value).__name__}, not a polars expression")
    return value


# The SHA-256 of each user module's source as it was when this process imported it: the code
# in memory, which the file on disk may no longer be.
_IMPORTED: dict[str, str] = {}


def _load(ref: str, *, reload: bool = False) -> tuple[Callable[..., Any], str]:
    """The function ``module:function`` and the SHA-256 of its module's source as loaded."""
    module_name, _, attr = ref.partition(":")
    module = sys.modules.get(module_name)
    if module is None or reload or module_name not in _IMPORTED:
        digest = _source_hash(_origin(module_name), module_name)  # before: never newer code
        if module is not None and (reload or module_name not in _IMPORTED):
            module = importlib.reload(module)
        elif module is None:
            module = importlib.import_module(module_name)
        _IMPORTED[module_name] = digest
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise AttributeError(f"module {module_name!r} has no function {attr!r}")
    return fn, _IMPORTED[module_name]


def _origin(module_name: str) -> str | None:
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    return found.origin if found is not None else None


def _source_hash(path: str | None, name: str) -> str:
    if not path:
        return hashlib.sha256(name.encode()).hexdigest()
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return hashlib.sha256(name.encode()).hexdigest()


def check_spec(spec: PipelineSpec, root: Path) -> tuple[str, str] | None:
    """(key, problem) for the first row check or user function of ``spec`` that cannot be used;
    None when all can."""
    _add_paths(root, spec.python_path)
    for i, check in enumerate(spec.checks):
        if check.expr is not None:
            try:
                compile_expr(check.expr)
            except ValueError as exc:
                return f"checks[{i}].expr", str(exc)
    refs = [(f"checks[{i}].call", c.call) for i, c in enumerate(spec.checks) if c.call]
    refs += [(f"transforms[{i}]", ref) for i, ref in enumerate(spec.transforms)]
    for key, ref in refs:
        try:
            _load(ref)
        except Exception as exc:
            return key, f"cannot load {ref}: {type(exc).__name__}: {exc}"
    return None


def code_version(spec: PipelineSpec, root: Path, hashes: dict[str, str] | None = None) -> str:
    """mrbatch's version and the source of every module ``spec`` calls (as on disk now, or
    ``hashes`` by module name: what a worker has loaded)."""
    parts = [f"mrbatch {__version__}"]
    if spec.functions:
        _add_paths(root, spec.python_path)
    for module_name in sorted({ref.partition(":")[0] for ref in spec.functions}):
        if hashes is not None and module_name in hashes:
            parts.append(f"{module_name} {hashes[module_name]}")
            continue
        parts.append(f"{module_name} {_source_hash(_origin(module_name), module_name)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


class _Timeout(BaseException):
    pass


def call_bounded(fn: Callable[..., Any], args: tuple[Any, ...], timeout: float, what: str) -> Any:
    """``fn(*args)`` bounded by ``timeout`` seconds; UserCodeError naming ``what`` when it
    raises or runs too long. In a pool worker's main thread a timer signal interrupts it; in
    any other thread it runs in a helper thread that is abandoned when it overruns."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):

        def expire(_signum: int, _frame: Any) -> None:
            raise _Timeout

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return fn(*args)
        except _Timeout:
            raise UserCodeError(f"{what} did not return within {timeout:g}s") from None
        except UserCodeError:
            raise
        except Exception as exc:
            raise UserCodeError(f"{what} raised {type(exc).__name__}: {exc}") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=run, name="user-code", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise UserCodeError(f"{what} did not return within {timeout:g}s")
    if "error" in box:
        error = box["error"]
        raise UserCodeError(f"{what} raised {type(error).__name__}: {error}") from None
    return box.get("value")


class Rules:
    """A pipeline's row checks and transforms, loaded once per worker."""

    def __init__(self, spec: PipelineSpec, root: Path, *, reload: bool = False) -> None:
        _add_paths(root, spec.python_path)
        self.spec = spec
        self.timeout = spec.timeout
        self.hashes: dict[str, str] = {}
        self.checks: list[tuple[str, pl.Expr | Callable[..., Any], str | None]] = []
        for check in spec.checks:
            if check.expr is not None:
                self.checks.append((check.expr, compile_expr(check.expr), check.reason))
            else:
                assert check.call is not None
                self.checks.append((check.call, self._fn(check.call, reload), check.reason))
        self.transforms = [(ref, self._fn(ref, reload)) for ref in spec.transforms]
        self.version = code_version(spec, root, self.hashes)

    def _fn(self, ref: str, reload: bool) -> Callable[..., Any]:
        fn, digest = _load(ref, reload=reload)
        self.hashes[ref.partition(":")[0]] = digest
        return fn

    def check(self, frame: pl.DataFrame) -> pl.Series | None:
        """Per row: null where every check passes, else the failed checks' reasons joined by
        "; ". None when there are no checks."""
        if not self.checks:
            return None
        reasons: list[pl.Series] = []
        for name, rule, reason in self.checks:
            if isinstance(rule, pl.Expr):
                try:
                    mask = frame.select(rule.fill_null(False).alias("m")).to_series()
                except pl.exceptions.PolarsError as exc:
                    raise UserCodeError(f"row check {name} failed: {_first(exc)}") from None
                text: Any = reason
            else:
                answer = call_bounded(rule, (frame,), self.timeout, f"row check {name}")
                mask, text = _mask_and_reason(answer, name, reason)
            mask = _as_mask(mask, frame.height, name)
            if isinstance(text, pl.Series):
                failed = pl.when(~mask).then(text.cast(pl.String).fill_null(name))
                reasons.append(pl.select(failed.alias("r")).to_series())
            else:
                shown = str(text or f"failed {name}")
                reasons.append(pl.select(pl.when(~mask).then(pl.lit(shown)).alias("r")).to_series())
        joined = pl.select(pl.concat_str(reasons, separator="; ", ignore_nulls=True).alias("r"))
        series = joined.to_series()
        return pl.select(pl.when(series != "").then(series).alias("r")).to_series()

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        for name, fn in self.transforms:
            out = call_bounded(fn, (frame,), self.timeout, f"transform {name}")
            if not isinstance(out, pl.DataFrame):
                raise UserCodeError(
                    f"transform {name} returned {type(out).__name__}, not a polars DataFrame"
                )
            if out.height != frame.height:
                raise UserCodeError(
                    f"transform {name} returned {out.height} rows for {frame.height}: a"
                    " transform keeps every row (reject rows with a row check instead)"
                )
            frame = out
        return frame


def _mask_and_reason(answer: Any, name: str, reason: str | None) -> tuple[Any, Any]:
    if isinstance(answer, tuple) and len(answer) == 2:
        return answer[0], answer[1] if answer[1] is not None else reason
    if isinstance(answer, pl.Series):
        return answer, reason
    raise UserCodeError(
        f"row check {name} returned {type(answer).__name__}; expected (mask, reason)"
    )


def _as_mask(mask: Any, height: int, name: str) -> pl.Series:
    if isinstance(mask, pl.Expr):
        raise UserCodeError(f"row check {name} returned an expression; return a Series")
    series = mask if isinstance(mask, pl.Series) else pl.Series(list(mask))
    if series.dtype != pl.Boolean or series.len() != height:
        raise UserCodeError(
            f"row check {name} returned a mask of {series.len()} {series.dtype} values for"
            f" {height} rows; expected booleans, one per row"
        )
    return series.fill_null(False)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_rules(spec: PipelineSpec, root: Path, pinned: str | None) -> Rules:
    """The rules of ``spec`` whose code is the version a run pinned: loaded code that differs
    is imported again once; UserCodeError when it still differs (the code changed since the
    run was claimed)."""
    rules = Rules(spec, root)
    if pinned is None or rules.version == pinned:
        return rules
    rules = Rules(spec, root, reload=True)
    if rules.version != pinned:
        raise UserCodeError(
            f"the code of pipeline {spec.name} changed since this run was claimed (version"
            f" {pinned} then, {rules.version} now); `mrbatch redrive` runs every chunk with"
            " the new code"
        )
    return rules
