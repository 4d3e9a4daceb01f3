"""A provider of Envoy resources written by hand: a YAML/JSON file of resources, each with its `@type`."""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import pkgutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from spillover.controller.contracts import AdminDirectory, GroupView
from spillover.server.resources import MESSAGE_CLASSES, TYPE_PREFIX

log = logging.getLogger(__name__)


class StaticResourcesFile:
    """Serves Envoy resources written by hand in a YAML/JSON file (each with its `@type`), watched."""

    def __init__(self, path: Path, poll_interval: float = 0.25) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self.changed: Callable[..., None] = lambda urgent=False: None
        self._messages: list[Message] = load_resources_file(path)
        self._stamp = _file_stamp(path)

    def resources(self, group: GroupView) -> Iterable[Message]:
        return self._messages

    def attach(self, proxies: AdminDirectory) -> None:
        pass

    async def warm_up(self) -> None:
        """The file is read in the constructor: nothing to wait for."""

    def readiness(self) -> tuple[bool, list[str]]:
        # A broken edit keeps the last good resources, which is what is served.
        return True, []

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            stamp = _file_stamp(self.path)
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                self._messages = load_resources_file(self.path)
            except (OSError, ValueError) as error:
                # Envoy keeps the last good configuration: a broken edit changes nothing.
                log.error("%s: %s (keeping the last good resources)", self.path, error)
                continue
            self.changed()


def _file_stamp(path: Path) -> tuple[float, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime, stat.st_size)


def load_resources_file(path: Path) -> list[Message]:
    text = path.read_text()
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    items: list[Any] = []
    for document in documents:
        if isinstance(document, dict) and "resources" in document:
            items.extend(document["resources"] or [])
        elif isinstance(document, list):
            items.extend(document)
        else:
            items.append(document)
    return [parse_resource(item, f"{path.name} resources[{index}]") for index, item in enumerate(items)]


def _import_types(value: Any) -> None:
    """Loads the proto modules of every `@type` inside a resource (typed_config, typed extensions).

    json_format resolves `Any` only through the descriptor pool, which holds modules already
    imported; a hand-written file may name any Envoy extension.
    """
    if isinstance(value, dict):
        type_url = value.get("@type")
        if isinstance(type_url, str):
            _import_proto_package(type_url.rsplit("/", 1)[-1].rsplit(".", 1)[0])
        for item in value.values():
            _import_types(item)
    elif isinstance(value, list):
        for item in value:
            _import_types(item)


@functools.cache
def _import_proto_package(package: str) -> None:
    try:
        module = importlib.import_module(package)
    except ImportError:
        return  # json_format reports the unknown type with its name
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")


def parse_resource(item: Any, where: str) -> Message:
    if not isinstance(item, dict) or "@type" not in item:
        raise ValueError(f"{where}: must be a mapping with an '@type' (e.g. {TYPE_PREFIX}envoy.config.cluster.v3.Cluster)")
    body = dict(item)
    type_url = str(body.pop("@type"))
    if not type_url.startswith(TYPE_PREFIX):
        type_url = TYPE_PREFIX + type_url
    message_class = MESSAGE_CLASSES.get(type_url)
    if message_class is None:
        known = ", ".join(sorted(t.removeprefix(TYPE_PREFIX) for t in MESSAGE_CLASSES))
        raise ValueError(f"{where}.@type: unknown resource type {type_url!r}; known: {known}")
    _import_types(body)
    try:
        return json_format.ParseDict(body, message_class())
    except json_format.ParseError as error:
        raise ValueError(f"{where}: {error}") from None


