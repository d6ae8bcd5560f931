"""Decide whether a completion degenerated into a repetition loop, and where the loop is.

``detect(text, token_ids=..., finish_reason=...)`` returns a ``Detection``; it is a pure
function, cheap enough to run on every completion. ``LoopWatcher`` does the same check
on a stream, token by token, so a proxy can stop a looping generation early.

What counts as a loop. A degenerate output *ends* in a run where one unit repeats back to
back -- to the end of the output, or up to a short "recovery" (the model escaped and
added a line before stopping). The unit can be one token or a whole paragraph. Text that
is merely repetitive (table rows sharing a template, numbered lists, code, logs, a
refrain, licence boilerplate, a few separator lines) has no such run at its tail, or a
run too short to matter, so it never fires.

How (and why it differs from the textbook). The textbook tool is a suffix structure or a
Z-function over the reversed string, both linear but a Python loop per character. We
stay in C instead: take a short *probe* at the tail, find its previous occurrences with
``str.rfind`` (each one proposes a period ``p``), and measure how far the equality
``s[i] == s[i + p]`` extends with galloping slice comparisons: linear in the run length
at ``memcmp`` speed, with a few dozen Python steps per completion. The rules, cheapest
first, each on its own view of the text:

1. ``cycle`` -- the raw text repeats exactly (most loops: no view to build, no offsets to
   map). Loops of bare punctuation ("!!!!", "12:12:12:") are found on a lower-cased,
   whitespace-collapsed view.
2. ``near_cycle`` -- equal once lower-cased with spacing and punctuation dropped (the view
   keeps letters and digits only): jittered repeats, and loops followed by a recovery.
3. ``counter_cycle`` -- equal once list counters are written "0" ("39. Violin",
   "40. Violin", also " 39. " inside a line, and a number closing the line after "-",
   ":", "=" or "#", as in "7. Bluefin-27"): the near-repeat SmolLM2 falls into. Only if
   the unit keeps letters, so a numeric table whose rows differ in numbers stays clean.

With token ids a fourth pass (``token_cycle``) looks for exact token cycles (what vLLM's
own repetition stop sees), and locates loops in token space. A ``repetition`` finish
reason from vLLM is a loop by definition (``finish_repetition``).

Real models loop in shapes these exact-period rules miss (measured on SmolLM2-135M's own
outputs, ``tests/data/detect/real_smollm2.jsonl.gz``), so two more steps follow, each
only when everything before found nothing:

4. Short loops (``floors``): the length floors fall with a short output's own length
   (a ``max_tokens = 48`` answer is ~150 normalized characters), and a unit repeated
   many times needs only a few dozen characters at any length. Units of punctuation,
   markup or digits ("<!--" lines, "1000000, ") count by their repeats. A loop the
   token limit cut (finish reason "length") needs 2.5 repeats if it runs to the end.
5. ``item_set`` (``items``): the tail keeps drawing from a few items in any order
   ("Austria, Germany, Austria, Austria, Germany"), also with a number drifting in an
   otherwise repeated row ("| Caravaggio | 1618 |", "| Caravaggio | 1621 |"), or with
   names changing before one repeated description ("15. Black Star: A deck of cards").

The package reads as the pipeline: ``config`` (thresholds), ``runs`` (the cycle search),
``views`` and ``counters`` (normalization), ``plan`` (limits per config), ``search``
(the text rules in order), ``tokens``, ``floors``, ``items``, ``verdict`` (``detect``)
and ``watcher`` (``LoopWatcher``).

Cost. Most completions are clean, so the clean path is kept short: one probe on the raw
text, one view of a 4 kB tail window built by a single ``bytes.translate`` (folding and
dropping in one C pass; ``str.translate`` looks each character up in a dict), a few probes
on it, and a counter gate; the token pass runs only when the text rules found nothing,
converting only the last ~600 ids first. Limits and checks are resolved once per config
(``plan_for``), and the counter rule's regexes run behind substring checks and are undone
with prefix sums rather than a Python loop per counter. On the benchmark corpus (short,
highly compressible items: zlib's best case) this is about as fast as computing the gzip
ratio; ``tests/test_detect_fast.py`` holds each shortcut to its plain definition.

Units in the returned ``Detection``: ``loop_start`` is a character offset into ``text``;
``loop_start_token`` a token offset into ``token_ids`` (exact for exact token cycles,
otherwise estimated in proportion to characters); ``period`` is in characters of the
original text (the mean length of one repetition) for every rule except ``token_cycle``,
where it is in tokens; ``repeats`` is the run length over the period, so a loop cut by
the token limit has a fractional count.
"""

from __future__ import annotations

from loopd.detect.config import DEFAULT_CONFIG, DetectorConfig
from loopd.detect.verdict import detect
from loopd.detect.watcher import LoopWatcher

__all__ = ["DEFAULT_CONFIG", "DetectorConfig", "LoopWatcher", "detect"]
