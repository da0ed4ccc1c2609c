"""The one exception type for bad user input.

Everything a user can get wrong (a path, a shape, a nesting, a corrupt file) raises
:class:`NestembError` with a message that names the problem. An error about one parameter
carries that parameter's Python name as data (``param``); its message names it through the
``{param}`` placeholder (or not at all). Each surface renders the name in its own terms without
reading the text: the library as the Python name, the CLI as the option's flag
(``--code-bytes``), the HTTP service as the JSON field. The CLI prints the message on one line
and exits with status 2. Programming errors stay ordinary exceptions so that they keep their
tracebacks.
"""

from __future__ import annotations

PLACEHOLDER = "{param}"


class NestembError(ValueError):
    """Bad input from a user: the message says what is wrong and, where it helps, where.

    ``param`` names the parameter at fault; the message template may name it with
    ``{param}``, and :meth:`render` puts any spelling of that name there (a template without
    the placeholder gets ``name: `` in front).

    Example:
        >>> try:
        ...     raise NestembError("nesting must be ascending, got (8, 4)")
        ... except NestembError as e:
        ...     print(e)
        nesting must be ascending, got (8, 4)
        >>> e = NestembError("{param} must be at least 1, got 0", param="batch_size")
        >>> str(e), e.render("--batch-size")
        ('batch_size must be at least 1, got 0', '--batch-size must be at least 1, got 0')
        >>> NestembError("is not valid JSON", param="config").render("collection.json")
        'collection.json: is not valid JSON'
    """

    def __init__(self, message: str, *, param: str | None = None):
        self.template = message
        self.param = param
        super().__init__(self.render())

    def render(self, name: str | None = None) -> str:
        """The message with ``name`` (default: the Python parameter name) for the parameter."""
        name = name or self.param
        if name is None:
            return self.template.replace(PLACEHOLDER, "value")
        if PLACEHOLDER in self.template:
            return self.template.replace(PLACEHOLDER, name)
        return f"{name}: {self.template}"

    def __str__(self) -> str:
        return self.render()

    def __reduce__(self):  # keep param across pickling (Ray workers, multiprocessing)
        return (_rebuild, (type(self), self.template, self.param), dict(self.__dict__))


def _rebuild(cls: type[NestembError], template: str, param: str | None) -> NestembError:
    err = cls.__new__(cls)
    NestembError.__init__(err, template, param=param)
    return err
