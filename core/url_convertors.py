"""A path convertor that also matches CR and LF: Starlette's ``path`` is ``.*`` without DOTALL,
so an id with a newline (a userId or messageId, which any client may send) matched no route."""

from starlette.convertors import CONVERTOR_TYPES, PathConvertor, register_url_convertor


class AnyPathConvertor(PathConvertor):
    regex = r"[\s\S]*"


def register() -> None:
    if "anypath" not in CONVERTOR_TYPES:
        register_url_convertor("anypath", AnyPathConvertor())
