"""A stand-in for the ``parameterized`` package's ``parameterized.expand`` (upstream's
test_shapley.py uses it; it is not a dependency of mmxai_fast).

Like the original on a ``unittest.TestCase``, ``@parameterized.expand(params)`` replaces the
decorated method by one method per parameter, named ``<name>_<index>_<param>``, in the class body
being defined.
"""
import functools
import inspect
from typing import Any, Callable, Iterable


def _expand(params: Iterable[Any]) -> Callable[[Callable[..., Any]], None]:
    def decorate(func: Callable[..., Any]) -> None:
        class_body = inspect.currentframe().f_back.f_locals  # type: ignore[union-attr]
        for index, param in enumerate(params):
            args = param if isinstance(param, tuple) else (param,)

            def case(self, _args=args):
                return func(self, *_args)

            name = f"{func.__name__}_{index}_{args[0]}"
            class_body[name] = functools.update_wrapper(case, func)
            class_body[name].__name__ = name
        return None

    return decorate


class parameterized:  # noqa: N801 (the package's spelling)
    expand = staticmethod(_expand)
