"""Templates of text and placeholders are rendered without Jinja (``PlainTemplate``):
the text must be exactly what Jinja renders, for the built-in templates, edited ones
and many generated ones, with awkward values; anything else stays with Jinja."""
from __future__ import annotations

import random

import pytest
from markupsafe import Markup

from cds.mail.compose import PLACEHOLDERS, TemplateProblem, _render, builtin_template, compile_template
from cds.mail.sandbox import MAX_TEXT, RenderLimit, render_bounded

VALUES = ["Alex", "", "Zoë Ünal-Smith", "<b>bold</b> & \"quoted\" 'single'", "a\nb\r\n  c  ", " ",
          "&amp;", "{{ name }}", "日本語", "0", "None"]


def contexts(seed: int, count: int):
    rng = random.Random(seed)
    for _ in range(count):
        ctx = {name: rng.choice(VALUES) for name in PLACEHOLDERS if name != "qr"}
        ctx["link"] = rng.choice(["https://cds.example.com/r/abc&d=<1>", "https://x/r/" + "t" * 43])
        html = dict(ctx, qr=Markup('<img src="cid:qr-code@cds" width="240" alt="QR &amp; code">'))
        yield ctx, html


def both(source: str, kind: str, ctx: dict) -> tuple[str, str]:
    """(plain render, Jinja render) of ``source``; the template must have a plain form."""
    template = compile_template(source, kind)
    assert template.plain is not None, source
    return template.plain.render(ctx), render_bounded(template.jinja, ctx)


def test_the_built_in_templates_are_plain_and_render_as_jinja_does(app):
    with app.app_context():
        sources = {kind: builtin_template(kind) for kind in ("subject", "text", "html")}
    for ctx, html_ctx in contexts(1, 60):
        for kind, source in sources.items():
            plain, jinja = both(source, kind, html_ctx if kind == "html" else ctx)
            assert plain == jinja
    # The subject names the user by first name, else by full name.
    assert both(sources["subject"], "subject", {"app": "App", "first_name": "", "name": "Alex Example"}) \
        == ("Set up your App, Alex Example",) * 2
    # The QR code's markup passes through unescaped, the values are escaped.
    plain, _ = both(sources["html"], "html", html_ctx | {"name": "<i>A&B</i>"})
    assert '<img src="cid:qr-code@cds"' in plain and "&lt;i&gt;A&amp;B&lt;/i&gt;" in plain


# Pieces of templates: literal text (whitespace, line ends, characters HTML escapes),
# placeholders in the forms a plain template may have, and whitespace control.
LITERALS = ["Hello ", "\n", "\n\n", "  ", "<p>", "&amp; \"q\" 'x'", "Grüße ", "\t", " \n  ", "}", "%"]
EXPRESSIONS = ["name", "first_name or name", "last_name and first_name", "first_name or last_name or name",
               "'<lit>&'", "42", "none", "true", "'' or name", "name and ''", "(first_name or name)",
               "link", "expiry", "instructions", "app"]


def generated(seed: int) -> str:
    rng = random.Random(seed)
    pieces = []
    for _ in range(rng.randint(1, 12)):
        roll = rng.random()
        if roll < 0.45:
            pieces.append(rng.choice(LITERALS))
        elif roll < 0.9:
            left, right = rng.choice([("{{ ", " }}"), ("{{- ", " }}"), ("{{ ", " -}}"), ("{{-", " -}}")])
            pieces.append(f"{left}{rng.choice(EXPRESSIONS)}{right}")
        elif roll < 0.95:
            pieces.append(rng.choice(["{# a comment #}", "{#- trimmed -#}", "  {# indented #}\n"]))
        else:
            pieces.append(rng.choice(["{% raw %}{{ not a placeholder }}{% endraw %}",
                                      "  {% raw %}<raw>{% endraw %}\n"]))
    return "".join(pieces) + rng.choice(["", "\n", "\n\n", " "])


@pytest.mark.parametrize("kind", ["text", "html"])
def test_generated_templates_render_as_jinja_does(kind):
    plain_ones = 0
    for seed in range(400):
        source = generated(seed)
        template = compile_template(source, kind)
        for ctx, html_ctx in contexts(seed, 3):
            values = html_ctx if kind == "html" else ctx
            expected = render_bounded(template.jinja, values)
            if template.plain is not None:
                plain_ones += 1
                assert template.plain.render(values) == expected, source
            assert _render(template, kind, values) == expected, source
    assert plain_ones > 900  # nearly all of them: only raw blocks are left to Jinja


@pytest.mark.parametrize("source", [
    "{% if first_name %}Hi {{ first_name }}{% endif %}", "{{ name|upper }}", "{{ name.upper() }}",
    "{{ name ~ '!' }}", "{{ not name }}", "{{ range }}", "{{ self }}", "{{ unknown }}", "{{ name[0] }}",
    "{% set x = 1 %}{{ x }}", "{{ name if first_name else app }}", "{{ 1 + 2 }}",
])
def test_other_templates_stay_with_jinja(source):
    assert compile_template(source, "text").plain is None


def test_missing_names_and_oversized_output_fail_as_with_jinja():
    # "qr" is in no text context: the plain form steps aside and Jinja names the problem.
    template = compile_template("Code: {{ qr }}", "text")
    assert template.plain is not None and template.plain.render({"name": "A"}) is None
    with pytest.raises(TemplateProblem, match="'qr' is undefined"):
        _render(template, "text", {"name": "A"})
    huge = {"name": "x" * MAX_TEXT}
    template = compile_template("{{ name }}!", "text")
    for plain in (template.plain, None):
        with pytest.raises(RenderLimit, match="its output is longer than 1,000,000 characters"):
            render_bounded(template.jinja, huge, plain)
    assert render_bounded(template.jinja, {"name": "x" * (MAX_TEXT - 1)}, template.plain) == "x" * (MAX_TEXT - 1) + "!"
