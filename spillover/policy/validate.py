"""From bytes to validated ModelDeployments, and the `spillover validate` command.

Pure functions, no I/O except in `validate_documents` / `validate_main`, so the file
source and the Kubernetes source share exactly the same rules.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from pydantic import ValidationError

from spillover.policy.errors import PolicyError, translate
from spillover.policy.model import ACCEPTED_API_VERSIONS, KIND, ModelDeployment

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


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: YAML silently keeps the last one, hiding typos."""


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


def parse_yaml(data: bytes | str, file: str) -> tuple[list[Any], PolicyError | None]:
    """All documents of a YAML stream, or a syntax error naming file and line."""
    try:
        return list(yaml.load_all(data, Loader=_Loader)), None
    except yaml.YAMLError as exc:
        return [], _yaml_error(file, exc)
    except (RecursionError, ValueError, OverflowError) as exc:  # pathological input
        return [], PolicyError(file, None, "", f"invalid YAML: {type(exc).__name__}")


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
    doc: Any, *, file: str | None = None, index: int | None = None, base_dir: str | None = None
) -> ModelDeployment | list[PolicyError]:
    """Validate one parsed document. `base_dir` anchors relative file references."""
    model = claimed_model(doc)
    if not isinstance(doc, dict):
        return [PolicyError(file, index, "", "document must be a mapping (a ModelDeployment)", model=model)]
    # status is written by controllers, never part of the policy.
    doc = {k: v for k, v in doc.items() if k != "status"}
    try:
        return ModelDeployment.model_validate(doc, context={"base_dir": base_dir})
    except ValidationError as exc:
        return translate(exc, file=file, index=index, root=ModelDeployment, model=model)
    except RecursionError:
        return [PolicyError(file, index, "", "document is nested too deeply", model=model)]


def load_file(data: bytes | str, file: str, *, base_dir: str | None = None) -> FileResult:
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
        result = validate_document(doc, file=file, index=index, base_dir=base_dir)
        if isinstance(result, ModelDeployment):
            loaded.append(LoadedDocument(file, index, result))
        else:
            errors.extend(result)
            claimed.append((index, claimed_model(doc)))
    return FileResult(file, tuple(loaded), tuple(errors), tuple(claimed))


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


def validate_documents(paths: Sequence[str]) -> tuple[list[ModelDeployment], list[PolicyError]]:
    """Validate files (directories: their *.yaml / *.yml), including cross-file rules."""
    files, errors = expand_paths(paths)
    documents: list[LoadedDocument] = []
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as exc:
            errors.append(PolicyError(str(f), None, "", f"cannot read: {exc.strerror}"))
            continue
        result = load_file(data, str(f), base_dir=str(f.parent))
        documents.extend(result.documents)
        errors.extend(result.errors)
    kept, dup_errors = check_duplicates(documents)
    errors.extend(dup_errors)
    errors.sort(key=lambda e: (e.file or "", e.index if e.index is not None else -1, e.line or 0, e.path))
    return [d.model for d in kept], errors


def validate_main(paths: list[str]) -> int:
    """`spillover validate FILE...`: errors on stderr, exit 0 when everything is valid."""
    if not paths:
        print("usage: spillover validate FILE_OR_DIR...", file=sys.stderr)
        return 2
    models, errors = validate_documents(paths)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(models)} model(s) valid")
    return 0
