"""loadtests/bench/opcodes.py's counter: each opcode the eval loop runs, once, for the right
code object, its own and its callers' inclusive counts."""

from __future__ import annotations

import dis
from types import CodeType, FrameType

from loadtests.bench.opcodes import OpcodeCounter
from loadtests.bench.phases import PhaseCounter


def straight(a: int, b: int) -> int:
    c = a + b
    return c * 2


def looping(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def caller(n: int) -> int:
    return straight(n, 1) + looping(n)


def recursive(n: int) -> int:
    return 0 if n == 0 else 1 + recursive(n - 1)


def instructions(code: CodeType) -> int:
    return sum(1 for _ in dis.get_instructions(code))


def counted(call: object, *args: int) -> OpcodeCounter:
    counter = OpcodeCounter(skip_file="(none)")
    with counter:
        call(*args)  # type: ignore[operator]
    return counter


def test_a_function_without_branches_counts_each_of_its_instructions_once() -> None:
    counter = counted(straight, 3, 4)
    assert counter.own[straight.__code__] == instructions(straight.__code__)
    assert counter.inclusive[straight.__code__] == instructions(straight.__code__)
    assert counter.entries[straight.__code__] == 1


def test_a_loop_counts_its_body_once_per_turn() -> None:
    two = counted(looping, 2).own[looping.__code__]
    three = counted(looping, 3).own[looping.__code__]
    twelve = counted(looping, 12).own[looping.__code__]
    # FOR_ITER, STORE_FAST, LOAD_FAST, LOAD_FAST, BINARY_OP, STORE_FAST, JUMP_BACKWARD
    assert three - two == 7
    assert twelve - two == 10 * 7


def test_a_caller_includes_its_callees_and_owns_only_its_own() -> None:
    counter = counted(caller, 5)
    own = counter.own
    assert own[straight.__code__] == instructions(straight.__code__)
    assert counter.inclusive[caller.__code__] == (
        own[caller.__code__] + own[straight.__code__] + own[looping.__code__]
    )
    assert counter.total == sum(own.values())


def test_a_recursion_is_counted_once_in_its_inclusive_count() -> None:
    counter = counted(recursive, 4)
    assert counter.entries[recursive.__code__] == 5
    assert counter.inclusive[recursive.__code__] == counter.own[recursive.__code__]


def test_frames_of_the_skipped_file_are_not_counted_but_their_callees_are() -> None:
    counter = OpcodeCounter(skip_file=__file__)
    with counter:
        caller(5)
    assert caller.__code__ not in counter.own
    assert straight.__code__ not in counter.own
    counter = OpcodeCounter(skip_file=__file__)
    with counter:
        dis.opname.index("NOP")  # (C: nothing counted)
    assert counter.total == 0


def test_each_opcode_goes_to_the_phase_of_the_innermost_phase_function_on_the_stack() -> None:
    class Phases(PhaseCounter):
        def _phase(self, frame: FrameType) -> str:
            walk: FrameType | None = frame
            while walk is not None:
                if walk.f_code is straight.__code__:
                    return "straight"
                walk = walk.f_back
            return "other"

    counter = OpcodeCounter(skip_file="(none)", phases=Phases())
    with counter:
        caller(5)
    assert counter.by_phase["straight"] == counter.own[straight.__code__]
    assert counter.by_phase["other"] == counter.total - counter.own[straight.__code__]
