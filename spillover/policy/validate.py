"""From bytes to validated ModelDeployments, and the `spillover validate` command.

Pure functions, no I/O except in `validate_documents` / `validate_main`, so the file
source and the Kubernetes source share exactly the same rules.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from pydantic import ValidationError

from spillover.policy.defaults import NO_DEFAULTS, PolicyDefaults
from spillover.policy.errors import PolicyError, translate
from spillover.policy.meta import ACCEPTED_API_VERSIONS, KIND
from spillover.policy.model import ModelDeployment

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class LoadedDocument:
    file: str
    index: int
    model: ModelDeployment

    @property
    def where(self) -> str:
        return f"{self.file}[{self.index}]"


@dataclass(frozen=True)
class FileResult:
    """Outcome of loading one file: valid documents, errors, and which models the
    invalid documents meant to define (so the source can keep their last good config)."""

    file: str
    documents: tuple[LoadedDocument, ...]
    errors: tuple[PolicyError, ...]
    # Model names claimed by invalid documents, by document index.
    claimed: tuple[tuple[int, str | None], ...] = ()
    # The file could not be read as YAML at all: every model it defined is in doubt.
    unreadable: bool = False
    # Valid documents asking for what file mode cannot do (served anyway, see file_mode_warnings).
    warnings: tuple[PolicyError, ...] = ()
    # Documents that are ModelDeployments (valid or not); 0 when the file holds only other kinds.
    model_documents: int = 0


# The largest policy file read; a larger one is refused without being read (a clear error naming the
# file and the limit). 1 MiB holds about a thousand ModelDeployments and parses in well under a second.
MAX_POLICY_FILE_BYTES = 1 << 20
# The most values (scalars, list items, mapping entries) a file may expand to. YAML aliases let a few
# hundred bytes stand for billions of values ("billion laughs"); validation would walk every one.
MAX_DOCUMENT_VALUES = 200_000

# libyaml's parser (PyYAML's C extension) is about 10x faster than the pure-Python one: a 1 MiB file
# in ~0.15 s instead of ~1.8 s. The PyYAML wheels ship it; a build without it still works, slower.
_BaseLoader = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader
C_LOADER = _BaseLoader is not yaml.SafeLoader


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """SafeLoader (libyaml's when available) that refuses duplicate keys: YAML silently keeps the last
    one, hiding typos."""


class PolicyFileTooLarge(ValueError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"file is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


def read_policy_file(path: str | Path, max_bytes: int = MAX_POLICY_FILE_BYTES) -> bytes:
    """The file's bytes, reading at most `max_bytes` + 1 of them: a file over the limit (or one that
    grows past it while being read) raises PolicyFileTooLarge without being read in full."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise PolicyFileTooLarge(size, max_bytes)
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PolicyFileTooLarge(len(data), max_bytes)
    return data


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue  # unhashable key: the constructor reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(file: str, exc: yaml.YAMLError) -> PolicyError:
    # Only problem/context and the position: the default str() quotes the offending
    # line, which may hold a secret.
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or "invalid YAML"
    context = getattr(exc, "context", None)
    text = f"{context}: {problem}" if context else str(problem)
    if mark is not None:
        return PolicyError(file, None, "", f"invalid YAML: {text} (line {mark.line + 1}, column {mark.column + 1})",
                           line=mark.line + 1)
    return PolicyError(file, None, "", f"invalid YAML: {text}")


def _expands_beyond(documents: list[Any], limit: int) -> bool:
    """Whether the documents hold more than `limit` values once aliases are expanded (counted lazily:
    stops at the limit, so a bomb costs `limit` steps, not its expansion)."""
    seen = 0
    stack = list(documents)
    while stack:
        value = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def parse_yaml(data: bytes | str, file: str) -> tuple[list[Any], PolicyError | None]:
    """All documents of a YAML stream, or a syntax error naming file and line."""
    try:
        documents = list(yaml.load_all(data, Loader=_Loader))
    except yaml.YAMLError as exc:
        return [], _yaml_error(file, exc)
    except (RecursionError, ValueError, OverflowError, MemoryError) as exc:  # pathological input
        return [], PolicyError(file, None, "", f"invalid YAML: {type(exc).__name__}")
    if _expands_beyond(documents, MAX_DOCUMENT_VALUES):
        return [], PolicyError(
            file, None, "", f"invalid YAML: expands to more than {MAX_DOCUMENT_VALUES} values (YAML aliases?)"
        )
    return documents, None


def is_model_deployment(doc: Any) -> bool:
    """Documents of other kinds (a Deployment, a Service) may share the file and are skipped."""
    if not isinstance(doc, dict):
        return True  # reported as an error by validate_document
    kind = doc.get("kind")
    api = doc.get("apiVersion")
    return kind == KIND or api in ACCEPTED_API_VERSIONS or kind is None


def claimed_model(doc: Any) -> str | None:
    if isinstance(doc, dict) and isinstance(doc.get("spec"), dict):
        model = doc["spec"].get("model")
        if isinstance(model, str):
            return model
    return None


def validate_document(
    doc: Any,
    *,
    file: str | None = None,
    index: int | None = None,
    base_dir: str | None = None,
    defaults: PolicyDefaults = NO_DEFAULTS,
) -> ModelDeployment | list[PolicyError]:
    """Validate one parsed document. `base_dir` anchors relative file references; `defaults` are the
    controller configuration's (spillover.policy.defaults)."""
    model = claimed_model(doc)
    if not isinstance(doc, dict):
        return [PolicyError(file, index, "", "document must be a mapping (a ModelDeployment)", model=model)]
    # status is written by controllers, never part of the policy.
    doc = {k: v for k, v in doc.items() if k != "status"}
    try:
        return ModelDeployment.model_validate(doc, context={"base_dir": base_dir, "defaults": defaults})
    except ValidationError as exc:
        return translate(exc, file=file, index=index, root=ModelDeployment, model=model)
    except RecursionError:
        return [PolicyError(file, index, "", "document is nested too deeply", model=model)]


def load_file(
    data: bytes | str, file: str, *, base_dir: str | None = None, defaults: PolicyDefaults = NO_DEFAULTS
) -> FileResult:
    """bytes -> models + errors for one file. No I/O."""
    docs, syntax = parse_yaml(data, file)
    if syntax is not None:
        return FileResult(file, (), (syntax,), unreadable=True)
    loaded: list[LoadedDocument] = []
    errors: list[PolicyError] = []
    claimed: list[tuple[int, str | None]] = []
    for index, doc in enumerate(docs):
        if doc is None or not is_model_deployment(doc):
            continue
        result = validate_document(doc, file=file, index=index, base_dir=base_dir, defaults=defaults)
        if isinstance(result, ModelDeployment):
            loaded.append(LoadedDocument(file, index, result))
        else:
            errors.extend(result)
            claimed.append((index, claimed_model(doc)))
    warnings = tuple(w for d in loaded for w in file_mode_warnings(d.model, file, d.index))
    return FileResult(
        file, tuple(loaded), tuple(errors), tuple(claimed), warnings=warnings, model_documents=len(loaded) + len(claimed)
    )


def file_mode_warnings(md: ModelDeployment, file: str | None, index: int | None) -> list[PolicyError]:
    """What a valid document asks for that file mode cannot do (it is served anyway)."""
    out: list[PolicyError] = []
    spec = md.spec
    endpoints = bool(spec.local_backend and spec.local_backend.endpoints)
    for path, ref in (("spec.serviceRef", spec.service_ref), ("spec.modelSourceRef", spec.model_source_ref)):
        if ref is not None and not endpoints:
            out.append(PolicyError(
                file, index, path,
                "resolved only in Kubernetes mode (serve --kubernetes); give localBackend.endpoints: "
                "without a local endpoint all traffic goes to the remote backend (FAILOVER)",
                model=md.model,
            ))
    if spec.offloading_config is not None and spec.offloading_config.destination is not None:
        out.append(PolicyError(
            file, index, "spec.offloadingConfig.destination",
            "managed only in Kubernetes mode (serve --kubernetes): no copy is made here and the model has no "
            "remote backend",
            model=md.model,
        ))
    for i, metric in enumerate(spec.offloading_config.metrics if spec.offloading_config else []):
        if metric.effective_source == "kubernetes":
            out.append(PolicyError(
                file, index, f"spec.offloadingConfig.metrics[{i}]",
                "source kubernetes (the metrics APIs) is read only in Kubernetes mode: it stays unknown here",
                model=md.model,
            ))
    return out


def check_duplicates(
    documents: Iterable[LoadedDocument], *, incumbents: dict[str, str] | None = None
) -> tuple[list[LoadedDocument], list[PolicyError]]:
    """Reject a second definition of a model (or of a name in a namespace), naming both places.

    The first definition (in the order given) wins, except that a model keeps being served from the file it was
    already served from (`incumbents`: model -> file), so adding a conflicting file never
    takes a working model away.
    """
    docs = list(documents)
    incumbents = incumbents or {}
    # Stable sort: incumbents first, then the order the documents were given in.
    order = sorted(docs, key=lambda d: incumbents.get(d.model.model) != d.file)
    by_model: dict[str, LoadedDocument] = {}
    by_name: dict[tuple[str | None, str], LoadedDocument] = {}
    kept, errors = [], []
    for d in order:
        key = (d.model.metadata.namespace, d.model.metadata.name)
        if d.model.model in by_model:
            first = by_model[d.model.model]
            errors.append(PolicyError(d.file, d.index, "spec.model",
                                      f'duplicate model "{d.model.model}" (also defined in {first.where})',
                                      model=d.model.model))
        elif key in by_name:
            first = by_name[key]
            errors.append(PolicyError(d.file, d.index, "metadata.name",
                                      f'duplicate name "{d.model.metadata.name}" (also used in {first.where})',
                                      model=d.model.model))
        else:
            by_model[d.model.model] = d
            by_name[key] = d
            kept.append(d)
    position = {id(d): i for i, d in enumerate(docs)}
    kept.sort(key=lambda d: position[id(d)])
    return kept, errors


def expand_paths(paths: Sequence[str]) -> tuple[list[Path], list[PolicyError]]:
    files, errors = [], []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files.extend(sorted(f for f in path.iterdir() if f.suffix in YAML_SUFFIXES and f.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            errors.append(PolicyError(p, None, "", "no such file or directory"))
    return files, errors


def validate_documents(
    paths: Sequence[str], defaults: PolicyDefaults = NO_DEFAULTS
) -> tuple[list[ModelDeployment], list[PolicyError]]:
    """Validate files (directories: their *.yaml / *.yml), including cross-file rules."""
    models, errors, _ = check_paths(paths, defaults)
    return models, errors


def check_paths(
    paths: Sequence[str], defaults: PolicyDefaults = NO_DEFAULTS
) -> tuple[list[ModelDeployment], list[PolicyError], list[PolicyError]]:
    """(valid models, errors, warnings) of files and directories. A file named on its own, or a
    directory, without any ModelDeployment document is an error: it was given to be checked."""
    files, errors = expand_paths(paths)
    warnings: list[PolicyError] = []
    documents: list[LoadedDocument] = []
    per_file: dict[str, int] = {}
    for f in files:
        try:
            data = read_policy_file(f)
        except PolicyFileTooLarge as exc:
            errors.append(PolicyError(str(f), None, "", str(exc)))
            continue
        except OSError as exc:
            errors.append(PolicyError(str(f), None, "", f"cannot read: {exc.strerror}"))
            continue
        result = load_file(data, str(f), base_dir=str(f.parent), defaults=defaults)
        documents.extend(result.documents)
        errors.extend(result.errors)
        warnings.extend(result.warnings)
        per_file[str(f)] = result.model_documents + int(result.unreadable)
    for p in paths:
        path = Path(p)
        if path.is_dir():
            inside = [n for f, n in per_file.items() if Path(f).parent == path]
            if not sum(inside):
                errors.append(PolicyError(p, None, "", "no ModelDeployment in this directory's *.yaml / *.yml files"))
        elif path.is_file() and per_file.get(str(path)) == 0:
            errors.append(PolicyError(
                p, None, "", "no ModelDeployment in this file (it is empty or holds only other kinds)"
            ))
    kept, dup_errors = check_duplicates(documents)
    errors.extend(dup_errors)
    order = lambda e: (e.file or "", e.index if e.index is not None else -1, e.line or 0, e.path)  # noqa: E731
    errors.sort(key=order)
    warnings.sort(key=order)
    return [d.model for d in kept], errors, warnings


def validate_main(paths: list[str], defaults: PolicyDefaults = NO_DEFAULTS) -> int:
    """`spillover validate FILE...`: errors and warnings on stderr, exit 0 when everything is valid."""
    if not paths:
        print("usage: spillover validate FILE_OR_DIR...", file=sys.stderr)
        return 2
    models, errors, warnings = check_paths(paths, defaults)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(models)} model(s) valid" + (f", {len(warnings)} warning(s)" if warnings else ""))
    return 0
