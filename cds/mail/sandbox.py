"""The e-mail templates' sandbox, with bounded work.

Jinja's ``SandboxedEnvironment`` keeps a template away from Python; it does not
bound how long a template runs or how much it writes: ``{{ 9**9**7 }}`` or two
nested 4000-step loops would run for as long as they like, in the preview, at save
time and for every e-mail sent. Here every render has a budget:

- at most ``MAX_STEPS`` loop iterations and calls together;
- no text (output or any value built on the way) longer than ``MAX_TEXT``;
- no power, repetition or format width that would build a huge number or text
  (refused before it is computed);
- at most ``MAX_SECONDS`` of wall time, checked at every step.

A template over budget raises ``RenderLimit`` with a message for the administrator.
"""
from __future__ import annotations

import functools
import operator
import re
import threading
import time
import typing as t

from jinja2 import nodes, pass_context
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer
from markupsafe import escape

MAX_STEPS = 100_000
MAX_TEXT = 1_000_000
MAX_SECONDS = 2.0
MAX_POWER_BITS = 100_000
# A %-format or {}-format field wider (or more precise) than five digits.
_WIDE_FORMAT = re.compile(r"%[-+ #0*]*\d{6,}|%[-+ #0*]*\d*\.\d{6,}|\{[^{}]*?:[^{}]*?\d{6,}[^{}]*\}")


class RenderLimit(Exception):
    """A template needs more work or output than a deployment e-mail may take."""


class _Budget(threading.local):
    active = False
    steps = 0
    deadline = 0.0


_budget = _Budget()


class budget:
    """``with budget():`` around a render: the limits above apply inside."""

    def __enter__(self):
        _budget.active, _budget.steps = True, 0
        _budget.deadline = time.monotonic() + MAX_SECONDS
        return self

    def __exit__(self, *exc):
        _budget.active = False
        return False


def _step(count: int = 1) -> None:
    if not _budget.active:
        return
    _budget.steps += count
    if _budget.steps > MAX_STEPS:
        raise RenderLimit(f"it needs more than {MAX_STEPS:,} loop steps and calls; a deployment "
                          f"e-mail template must be far simpler")
    if time.monotonic() > _budget.deadline:
        raise RenderLimit(f"it took longer than {MAX_SECONDS:g} seconds to render")


def _size(value) -> int:
    if isinstance(value, (str, bytes, list, tuple, dict)):
        return len(value)
    return 0


def check_size(value):
    if _size(value) > MAX_TEXT:
        raise RenderLimit(f"it builds a text or list longer than {MAX_TEXT:,} characters")
    return value


def _check_args(args, kwargs, *, filtered_value: bool = False) -> None:
    """Refuse numbers that would size a text (widths, counts) beyond MAX_TEXT, and format
    strings with huge fields. ``filtered_value``: the first argument is the value a filter
    is applied to, which may be any number (``{{ 5000000|filesizeformat }}``)."""
    for index, value in enumerate((*args, *kwargs.values())):
        if filtered_value and index == 0 and not isinstance(value, str):
            continue
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_TEXT:
            raise RenderLimit(f"it passes the number {value if abs(value) < 10**20 else 'that large'} "
                              f"where at most {MAX_TEXT:,} is allowed")
        if isinstance(value, str) and _WIDE_FORMAT.search(value):
            raise RenderLimit("it formats a field wider than 99,999 characters")


def _guarded_filter(func):
    @functools.wraps(func)  # keeps Jinja's pass_context / pass_eval_context marks
    def guarded(*args, **kwargs):
        _step()
        _check_args(args, kwargs, filtered_value=not hasattr(func, "jinja_pass_arg"))
        return check_size(func(*args, **kwargs))
    return guarded


@pass_context  # also keeps Jinja from running it at compile time
def _loop_budget(context, iterable):
    for item in iterable:
        _step()
        yield item


@pass_context
def _text_budget(context, value):
    return check_size(value)


class _BudgetPoints(NodeTransformer):
    """Every ``for`` iterates through a budget counter; every ``~`` concatenation is
    size-checked (doubling a text in a short loop would otherwise explode)."""

    def visit_For(self, node: nodes.For):
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "_cds_loop_budget", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat):
        self.generic_visit(node)
        return nodes.Filter(node, "_cds_text_budget", [], [], None, None, lineno=node.lineno)


class BoundedSandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"**", "*", "%", "+", "//"})

    def __init__(self, **options):
        super().__init__(**options)
        self.filters = {name: _guarded_filter(f) for name, f in self.filters.items()}
        self.filters["_cds_loop_budget"] = _loop_budget
        self.filters["_cds_text_budget"] = _text_budget

    def _parse(self, source, name, filename):
        return _BudgetPoints().visit(super()._parse(source, name, filename))

    def call_binop(self, context, operator: str, left: t.Any, right: t.Any) -> t.Any:
        _step()
        if operator == "**" and isinstance(left, int) and isinstance(right, int) \
                and abs(left) > 1 and right > 0 and left.bit_length() * right > MAX_POWER_BITS:
            raise RenderLimit("it computes a number with more than 100,000 bits")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_TEXT:
                    raise RenderLimit(f"it repeats a text or list beyond {MAX_TEXT:,} characters")
        if operator == "%" and isinstance(left, str):
            if _WIDE_FORMAT.search(left):
                raise RenderLimit("it formats a field wider than 99,999 characters")
            _check_args(right if isinstance(right, tuple) else (right,), {})
        return check_size(super().call_binop(context, operator, left, right))

    def getattr(self, obj, attribute):
        if isinstance(obj, str) and attribute in ("format", "format_map") and _WIDE_FORMAT.search(obj):
            raise RenderLimit("it formats a field wider than 99,999 characters")
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        if isinstance(obj, str) and argument in ("format", "format_map") and _WIDE_FORMAT.search(obj):
            raise RenderLimit("it formats a field wider than 99,999 characters")
        return super().getitem(obj, argument)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        _step()
        _check_args(args, kwargs)
        return check_size(super().call(__context, __obj, *args, **kwargs))


class PlainTemplate:
    """A template that is only text and placeholders (``{{ name }}``, ``{{ first_name or
    name }}``, constants), as the built-in ones are: rendered by joining its parts,
    without a Jinja context per e-mail, which cost more than the rest of composing it.

    The parts come from the parse tree (the lexer's whitespace and trailing-newline rules
    already applied), and each placeholder's value is turned into text exactly as the
    code Jinja generates does: ``str()``, or ``markupsafe.escape()`` when autoescaping.
    Anything else in a template (tags, filters, calls, attributes, other names) leaves it
    to Jinja (``plain_form`` gives None). tests/mail/test_plain_templates.py compares
    both on many templates and values."""

    __slots__ = ("parts", "names", "convert")

    def __init__(self, parts: list, names: frozenset, autoescape: bool):
        self.parts = parts  # literal text, or a function of the context
        self.names = names
        self.convert = escape if autoescape else str

    def render(self, context: dict) -> str | None:
        """The text, or None when a name is missing from ``context`` (Jinja then says which)."""
        if not self.names <= context.keys():
            return None
        convert = self.convert
        return "".join([part if part.__class__ is str else convert(part(context)) for part in self.parts])


def _plain_value(node, names: set, allowed: frozenset):
    """A function of the context giving ``node``'s value, for the expressions a plain
    template may hold; None for any other."""
    if isinstance(node, nodes.Name) and node.ctx == "load" and node.name in allowed:
        names.add(node.name)
        return operator.itemgetter(node.name)
    if isinstance(node, nodes.Const):
        value = node.value
        return lambda context: value
    if isinstance(node, (nodes.Or, nodes.And)):
        left, right = _plain_value(node.left, names, allowed), _plain_value(node.right, names, allowed)
        if left is None or right is None:
            return None
        if isinstance(node, nodes.Or):
            return lambda context: left(context) or right(context)
        return lambda context: left(context) and right(context)
    return None


def plain_form(env: SandboxedEnvironment, source: str, allowed: frozenset) -> PlainTemplate | None:
    """``source`` as a ``PlainTemplate`` if it is only text and placeholders whose names
    are in ``allowed``; else None."""
    parts, names = [], set()
    for output in env.parse(source).body:
        if not isinstance(output, nodes.Output):
            return None
        for child in output.nodes:
            if isinstance(child, nodes.TemplateData):
                part = child.data
            else:
                part = _plain_value(child, names, allowed)
                if part is None:
                    return None
            if parts and part.__class__ is str and parts[-1].__class__ is str:
                parts[-1] += part
            else:
                parts.append(part)
    return PlainTemplate(parts, frozenset(names), bool(env.autoescape))


def render_bounded(template, context: dict, plain: PlainTemplate | None = None) -> str:
    """Render within the budget; RenderLimit when over it. ``plain``: the template's
    ``plain_form``, used when ``context`` has all its names."""
    text = plain.render(context) if plain is not None else None
    if text is not None:
        if len(text) > MAX_TEXT:
            raise RenderLimit(f"its output is longer than {MAX_TEXT:,} characters")
        return text
    with budget():
        parts, total = [], 0
        for chunk in template.generate(context):
            total += len(chunk)
            if total > MAX_TEXT:
                raise RenderLimit(f"its output is longer than {MAX_TEXT:,} characters")
            parts.append(chunk)
            _step(0)
        return "".join(parts)
