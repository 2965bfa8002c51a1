"""Each script once per page: sphinx-thebe 0.3.1 adds its inline config twice.

The two copies differ only in how they name "no file" (None and ""), so Sphinx keeps
both. The second redeclares `const THEBE_JS_URL`, and the browser stops it with
"Identifier 'THEBE_JS_URL' has already been declared" on every page;
tests/test_book_browser.py fails on any such error.
"""


def drop_repeated_scripts(app, pagename, templatename, context, doctree):
    """Keep the first of scripts with the same file, attributes and inline body."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        filename = getattr(script, "filename", script) or ""
        key = (str(filename), tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", drop_repeated_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
