"""BFCL's AST checker for Python function calls, rewritten so it needs no `bfcl-eval` install.

The Berkeley Function Calling Leaderboard (v4, `bfcl-eval` 2026.3.23, Apache-2.0) grades a
model's calls against a list of possible answers per parameter. Its checker
(`bfcl_eval/eval_checker/ast_eval/ast_checker.py`) imports the package's whole dependency set,
so this module follows its rules for Python functions, quirks included:

- **Dispatch** by category: a category containing "parallel" uses order-independent matching,
  else one containing "multiple" checks the one expected function among several offered,
  else (simple) exactly one call must be made.
- **Function name**: the call's name must be the expected function's name (dotted names are
  compared as BFCL writes them; the server maps tool names back before checking).
- **Required parameters** of the function's doc must all be present.
- **No unknown parameters**: every argument must be both in the doc and in the possible
  answer.
- **Types** are exact (`bool` is not an `int`), after BFCL's conversions: an `int` given for a
  `float` parameter is taken as that float; the doc types map as string→str, integer→int,
  float→float, boolean→bool, array/tuple→list, dict→dict, any→str. Arrays and tuples check
  their items one level deep (ints are not widened there). When the possible answers have a
  different type than the doc (BFCL's "variable" answers), a value of the answers' type is
  accepted and compared exactly.
- **Values** must be in the parameter's list of possible answers. Strings (also inside lists
  and dicts) are compared after BFCL's normalisation: spaces and `,./-_*^` removed, lowercased,
  `'` turned into `"`. Dicts are checked key by key against each possible dict; lists of dicts
  element by element, in order.
- **Optional parameters**: a possible answer containing `""` may be left out; one without it
  must be given.
- **Parallel**: as many calls as expected, each expected call matched by a different call, in
  any order (first match wins, as in BFCL).
- **Relevance** (not an AST check): irrelevance/live_irrelevance succeed iff no call is made;
  live_relevance iff at least one call is made.

It was checked case for case against the official checker: `tests/fixtures/bfcl/` holds the
official verdicts (made once by `tests/fixtures/make_bfcl_checker_fixture.py` in a throwaway
environment with the full package) on correct and mutated calls for every AST category, and
`tests/learning/test_bfcl.py` asserts the same verdict here on every case.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AST_CATEGORIES",
    "RELEVANCE_CATEGORIES",
    "CheckResult",
    "check",
    "check_calls",
    "check_relevance",
    "standardize_string",
]

AST_CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
)
"""BFCL categories (its own names) graded by the AST checker."""

RELEVANCE_CATEGORIES = ("irrelevance", "live_irrelevance", "live_relevance")
"""BFCL categories graded only on whether a call was made."""

_PYTHON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}
_NESTED = ("array", "tuple")
_STRIP = re.compile(r"[ \,\.\/\-\_\*\^]")

Call = Mapping[str, Mapping[str, Any]]
"""One call as BFCL writes it: {function_name: {argument: value}}."""


@dataclass(frozen=True)
class CheckResult:
    valid: bool
    error_type: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        if self.valid:
            return "calls match a possible answer"
        detail = "; ".join(str(e) for e in self.errors[:2])
        return f"{self.error_type}: {detail}" if detail else self.error_type


_OK = CheckResult(True)


def _fail(error_type: str, *errors: str) -> CheckResult:
    return CheckResult(False, error_type, list(errors))


def standardize_string(text: str) -> str:
    """BFCL's string normalisation: so 'April 1, 2024' matches 'april 1 2024'."""
    return _STRIP.sub("", text).lower().replace("'", '"')


# --------------------------------------------------------------------------- entry points


def check_relevance(calls: Sequence[Call], category: str) -> CheckResult:
    """irrelevance categories: success iff no call; live_relevance: iff at least one call."""
    made = _made_a_call(calls)
    if "irrelevance" in category:
        return (
            _OK
            if not made
            else _fail(
                "irrelevance_error:decoder_success", "made a function call when none was relevant"
            )
        )
    return (
        _OK
        if made
        else _fail("relevance_error:decoder_failed", "made no function call when one was relevant")
    )


def _made_a_call(calls: Sequence[Call]) -> bool:
    # BFCL's is_empty_output: [] and [{}] are no call.
    return not (len(calls) == 0 or (len(calls) == 1 and len(calls[0]) == 0))


def check_calls(
    functions: Sequence[Mapping[str, Any]],
    calls: Sequence[Call],
    possible_answer: Sequence[Call],
    category: str,
) -> CheckResult:
    """BFCL's `ast_checker` for Python: `functions` are the task's function docs, `calls` the
    model's calls, `possible_answer` the task's ground truth, `category` BFCL's category."""
    if "parallel" in category:
        return _parallel_no_order(functions, calls, possible_answer)
    if "multiple" in category:
        return _multiple(functions, calls, possible_answer)
    if len(calls) != 1:
        return _fail("simple_function_checker:wrong_count", "Wrong number of functions.")
    return _simple(functions[0], calls[0], possible_answer[0])


def check(
    functions: Sequence[Mapping[str, Any]],
    calls: Sequence[Call],
    possible_answer: Sequence[Call] | None,
    category: str,
) -> CheckResult:
    """Grade `calls` the way BFCL grades `category` (relevance or AST)."""
    if category in RELEVANCE_CATEGORIES:
        return check_relevance(calls, category)
    if possible_answer is None:
        raise ValueError(f"BFCL category {category!r} needs a possible answer")
    try:
        return check_calls(functions, calls, possible_answer, category)
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        # Shapes BFCL's checker would crash on (e.g. a non-list where a list is expected).
        return _fail("checker_error", f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- categories


def _find_description(functions: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any]:
    for function in functions:
        if function["name"] == name:
            return function
    raise KeyError(f"no function doc for {name!r}")


def _multiple(functions, calls, possible_answers) -> CheckResult:
    if len(calls) != len(possible_answers):
        return _fail("multiple_function_checker:wrong_count", "Wrong number of functions.")
    expected = next(iter(possible_answers[0]))
    return _simple(_find_description(functions, expected), calls[0], possible_answers[0])


def _parallel_no_order(functions, calls, possible_answers) -> CheckResult:
    if len(calls) != len(possible_answers):
        return _fail("parallel_function_checker_no_order:wrong_count", "Wrong number of functions.")
    matched: set[int] = set()
    for i, answer in enumerate(possible_answers):
        description = _find_description(functions, next(iter(answer)))
        found = False
        errors: list[str] = []
        for index, call in enumerate(calls):
            if index in matched:
                continue
            result = _simple(description, call, answer)
            if result.valid:
                matched.add(index)
                found = True
                break
            errors.append(f"call {index}: {result.reason}")
        if not found:
            return _fail(
                "parallel_function_checker_no_order:cannot_find_match",
                f"no call matches expected call {i}",
                *errors,
            )
    return _OK


# --------------------------------------------------------------------------- one call


def _simple(description: Mapping[str, Any], call: Call, answer: Call) -> CheckResult:
    expected_args: Mapping[str, list] = next(iter(answer.values()))
    name = description["name"]
    properties = description["parameters"]["properties"]
    required = description["parameters"]["required"]

    if name not in call:
        return _fail(
            "simple_function_checker:wrong_func_name",
            f"Function name {name!r} not found in model output.",
        )
    args = call[name]

    for param in required:
        if param not in args:
            return _fail(
                "simple_function_checker:missing_required",
                f"Missing required parameter: {param!r}.",
            )

    for param, value in args.items():
        if param not in properties or param not in expected_args:
            return _fail(
                "simple_function_checker:unexpected_param", f"Unexpected parameter: {param!r}."
            )
        doc_type = properties[param]["type"]
        expected_type = _PYTHON_TYPES[doc_type]
        nested_type = (
            _PYTHON_TYPES[properties[param]["items"]["type"]] if doc_type in _NESTED else None
        )
        if doc_type == "tuple" and type(value) is tuple:
            value = list(value)
        if doc_type == "float" and type(value) is int:
            value = float(value)  # Python's int -> float widening

        typed = _type_check(
            param, value, expected_args[param], doc_type, expected_type, nested_type
        )
        if not typed.valid:
            return typed.result
        if not typed.is_variable:
            if expected_type is dict:
                result = _dict_check(param, value, expected_args[param])
            elif expected_type is list and nested_type is dict:
                result = _list_dict_check(param, value, expected_args[param])
            elif expected_type is str:
                result = _string_check(param, value, expected_args[param])
            elif expected_type is list:
                result = _list_check(param, value, expected_args[param])
            else:
                result = None
            if result is not None:
                if not result.valid:
                    return result
                continue
        if value not in expected_args[param]:
            return _fail(
                "value_error:others",
                f"Invalid value for parameter {param!r}: {value!r}. "
                f"Expected one of {expected_args[param]}.",
            )

    for param, possible in expected_args.items():
        if param not in args and "" not in possible:
            return _fail(
                "simple_function_checker:missing_optional",
                f"Optional parameter {param!r} not provided and not marked as optional.",
            )
    return _OK


@dataclass
class _Typed:
    valid: bool
    is_variable: bool = False
    result: CheckResult = _OK


def _answer_type(possible: Sequence[Any]) -> type | None:
    for answer in possible:
        if answer != "":  # "" marks an optional parameter
            return type(answer)
    return None


def _type_check(
    param: str,
    value: Any,
    possible: Sequence[Any],
    doc_type: str,
    expected_type: type,
    nested_type: type | None,
) -> _Typed:
    answer_type = _answer_type(possible)
    # BFCL's "variable": the answers are of another type than the doc says.
    is_variable = answer_type is not None and answer_type is not expected_type

    if type(value) is expected_type:
        if nested_type is None:
            return _Typed(True, is_variable)
        for item_answers in possible:
            ok = True
            if type(item_answers) is list:
                for item in value:
                    if not _type_check(
                        param, item, item_answers, nested_type.__name__, nested_type, None
                    ).valid:
                        ok = False
                        break
            if ok:
                return _Typed(True, is_variable)
        if answer_type is not None and type(value) is answer_type:
            # BFCL falls through to its variable case here, but keeps the failed verdict.
            return _Typed(
                False,
                True,
                _fail(
                    "type_error:nested",
                    f"Nested type checking failed for parameter {param!r}. Expected outer type "
                    f"{doc_type} with inner type {nested_type.__name__}. Parameter value: "
                    f"{value!r}.",
                ),
            )
    elif answer_type is not None and type(value) is answer_type:
        return _Typed(True, True)
    return _Typed(
        False,
        False,
        _fail(
            "type_error:simple",
            f"Incorrect type for parameter {param!r}. Expected type {doc_type}, got "
            f"{type(value).__name__}. Parameter value: {value!r}.",
        ),
    )


def _normalised(value: Any) -> Any:
    return standardize_string(value) if type(value) is str else value


def _string_check(param: str, value: str, possible: Sequence[Any]) -> CheckResult:
    allowed = [standardize_string(p) for p in possible if type(p) is str]
    if standardize_string(value) not in allowed:
        return _fail(
            "value_error:string",
            f"Invalid value for parameter {param!r}: {value!r}. Expected one of "
            f"{list(possible)}. Case insensitive.",
        )
    return _OK


def _list_check(param: str, value: list, possible: Sequence[Any]) -> CheckResult:
    given = [_normalised(v) for v in value]
    # Indexing as BFCL does: an optional "" becomes the empty list.
    allowed = [[_normalised(p[j]) for j in range(len(p))] for p in possible]
    if given not in allowed:
        return _fail(
            "value_error:list/tuple",
            f"Invalid value for parameter {param!r}: {value!r}. Expected one of {list(possible)}.",
        )
    return _OK


def _dict_check(param: str, value: Mapping[str, Any], possible: Sequence[Any]) -> CheckResult:
    result = _fail("dict_checker:unclear")
    for answer in possible:
        if answer == "":
            continue
        result = _fail("dict_checker:unclear")
        ok = True
        for key, item in value.items():
            if key not in answer:
                result = _fail("value_error:dict_key", f"Unexpected dict key parameter: '{key}'.")
                ok = False
                break
            allowed = [_normalised(a) for a in answer[key]]
            if _normalised(item) not in allowed:
                result = _fail(
                    "value_error:dict_value",
                    f"Invalid value for parameter {key!r}: {item!r}. Expected one of {allowed}.",
                )
                ok = False
                break
        for key, allowed_values in answer.items():
            if key not in value and "" not in allowed_values:
                errors = [*result.errors, f"Missing dict key parameter: '{key}'."]
                result = CheckResult(False, "value_error:dict_key", errors)
                ok = False
                break
        if ok:
            return _OK
    return result


def _list_dict_check(param: str, value: list, possible: Sequence[Any]) -> CheckResult:
    result = _fail("list_dict_checker:unclear")
    for answer in possible:
        if len(value) != len(answer):
            result = _fail(
                "value_error:list_dict_count", "Wrong number of dictionaries in the list."
            )
            continue
        ok = True
        for index in range(len(value)):
            result = _dict_check(param, value[index], [answer[index]])
            if not result.valid:
                ok = False
                break
        if ok:
            return _OK
    return result
