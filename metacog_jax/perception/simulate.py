"""Simulated participants for the rating study: a check of the whole paper-2 path with a known answer.

A simulated participant rates an item as

    rating = clip(model_confidence + bias[certainty of the style shown] + N(0, noise_sd), 0, 1)

where the certainty is "not_sure", "somewhat_sure" or "sure" for the 3 x 3 styles and "default" for the
default explanation (``DEFAULT_BIAS``: explanations that sound sure push ratings up). Because the model's
confidence, the bias and the noise are known, so is the population value of every gap statistic
(:func:`expected_gap`): the human ECE of infinitely many such participants, from the normal distribution
of each item's ratings over the ECE bins, and the human AUC, P(rating of a right answer > rating of a wrong
one) for one participant. :func:`simulate_offline` draws ratings in memory for a large study, and
:func:`run_participants` drives participants over HTTP against a running study server (`metacog study
simulate`), finding the style of each page from the explanation it shows; attention checks are answered
as asked. Both feed the same `gap` code as real ratings.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import html
import http.cookiejar
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping, Sequence

import numpy as np

from metacog_jax.perception.explanations import CERTAINTY_LEVELS, STYLE_NAMES

DEFAULT_BIAS = {"not_sure": -0.15, "somewhat_sure": 0.0, "sure": 0.15, "default": 0.2}
NO_STYLE_EFFECT = {"not_sure": 0.0, "somewhat_sure": 0.0, "sure": 0.0, "default": 0.0}


def certainty_of(style: str) -> str:
    """"default" or the certainty part of a ``{certainty}_{length}`` style."""
    if style == "default":
        return "default"
    for certainty in CERTAINTY_LEVELS:
        if style.startswith(certainty + "_"):
            return certainty
    raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLE_NAMES)}")


def check_bias(bias: Mapping[str, float]) -> dict[str, float]:
    missing = [k for k in DEFAULT_BIAS if k not in bias]
    unknown = [k for k in bias if k not in DEFAULT_BIAS]
    if missing or unknown:
        raise ValueError(f"bias needs exactly the keys {list(DEFAULT_BIAS)}; missing {missing}, unknown {unknown}")
    return {k: float(bias[k]) for k in DEFAULT_BIAS}


def rate(confidence: float, style: str, bias: Mapping[str, float], noise_sd: float,
         rng: np.random.Generator) -> float:
    """One simulated rating in [0, 1]."""
    return float(np.clip(confidence + bias[certainty_of(style)] + rng.normal(0.0, noise_sd), 0.0, 1.0))


# -- the population values ----------------------------------------------------------------------------
def _phi(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def expected_gap(items: Sequence[Mapping[str, Any]], style: str, bias: Mapping[str, float], noise_sd: float,
                 n_bins: int = 10) -> dict[str, float]:
    """Population values for participants who all see `style` on every item: model and human ECE and AUC
    and the two gaps, with ECE binned as `evaluation.metrics.ece` (equal-width bins, last bin closed)."""
    if noise_sd <= 0:
        raise ValueError(f"noise_sd must be > 0, got {noise_sd}")
    conf = np.array([float(i["model_confidence"]) for i in items])
    correct = np.array([float(bool(i["correct"])) for i in items])
    mu = conf + bias[certainty_of(style)]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Each item's rating is N(mu, sd) clipped to [0, 1]: mass below 0 sits at 0 (bin 0), above 1 at 1
    # (the last bin). Per bin: the probability mass and the mean rating's share E[r; r in bin].
    z = (edges[None, :] - mu[:, None]) / noise_sd  # (items, n_bins + 1)
    cdf, pdf = _cdf(z), _phi(z)
    mass = cdf[:, 1:] - cdf[:, :-1]
    first_moment = mu[:, None] * mass - noise_sd * (pdf[:, 1:] - pdf[:, :-1])
    mass[:, 0] += cdf[:, 0]
    mass[:, -1] += 1.0 - cdf[:, -1]
    first_moment[:, -1] += 1.0 - cdf[:, -1]  # the clipped mass at rating 1 (at 0 adds nothing)
    n = len(items)
    human_ece = float(np.sum(np.abs(first_moment.sum(0) - (mass * correct[:, None]).sum(0))) / n)
    from metacog_jax.evaluation import metrics

    model_ece = float(metrics.ece(conf, correct, n_bins=n_bins))
    model_auc = float(metrics.auroc(conf, correct))
    right, wrong = mu[correct == 1], mu[correct == 0]
    # One participant: P(r_right > r_wrong) for independent normal ratings (clipping only creates ties
    # far in the tails, where both ratings are 0 or both 1).
    human_auc = float(np.mean(_cdf((right[:, None] - wrong[None, :]) / (noise_sd * math.sqrt(2)))))
    return {"model_ece": model_ece, "human_ece": human_ece, "calibration_gap": human_ece - model_ece,
            "model_auc": model_auc, "human_auc": human_auc, "discrimination_gap": model_auc - human_auc}


def simulate_offline(items: Sequence[Mapping[str, Any]], conditions: Sequence[str], n_participants: int,
                     items_per_participant: int | None = None, bias: Mapping[str, float] = DEFAULT_BIAS,
                     noise_sd: float = 0.1, seed: int = 0) -> list[dict[str, Any]]:
    """Rating rows (the columns of `study export`) for `n_participants` simulated participants, assigned
    to `conditions` in turn (each a fixed style shown on every item), each rating a random subset of
    `items_per_participant` items (all if None)."""
    bias = check_bias(bias)
    rng = np.random.default_rng(seed)
    k = len(items) if items_per_participant is None else items_per_participant
    rows = []
    for p in range(n_participants):
        style = conditions[p % len(conditions)]
        for j in rng.choice(len(items), size=k, replace=False):
            item = items[int(j)]
            rows.append({"participant_id": f"sim{p}", "condition": style, "item_id": str(item["item_id"]),
                         "style": style, "rating": rate(float(item["model_confidence"]), style, bias, noise_sd,
                                                        rng),
                         "own_answer": "", "is_attention_check": 0, "attention_passed": "", "created_at": ""})
    return rows


# -- participants over HTTP -----------------------------------------------------------------------------
@dataclasses.dataclass
class Submitted:
    participant_id: str
    item_id: str
    style: str
    rating_percent: str
    is_attention_check: bool


_FIELD = re.compile(r'name="(item_id|csrf_token)" value="([^"]*)"')
_EXPLANATION = re.compile(r'id="explanation">(.*?)</p>', re.S)
_ATTENTION = re.compile(r"please enter (\d+(?:\.\d+)?) as your answer")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _participant(base_url: str, participant_id: str, items: Mapping[str, Mapping[str, Any]],
                 bias: Mapping[str, float], noise_sd: float, seed: int, link_params: Sequence[str],
                 timeout_s: float) -> list[Submitted]:
    """One simulated participant from the start link to the end page; returns what it submitted."""
    rng = np.random.default_rng([seed, int.from_bytes(participant_id.encode()[:8].ljust(8, b"\0"), "big")])
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
                                         _NoRedirect)
    base = base_url.rstrip("/")

    def request(path: str, form: Mapping[str, str] | None = None) -> tuple[int, str, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(base + path, data=data)
        if data is not None:
            req.add_header("Origin", base)
        try:
            with opener.open(req, timeout=timeout_s) as resp:
                return resp.status, resp.headers.get("Location", ""), resp.read().decode()
        except urllib.error.HTTPError as e:  # 3xx (redirects are not followed) and 4xx answers
            return e.code, e.headers.get("Location", ""), e.read().decode()
        except (urllib.error.URLError, OSError) as e:
            raise ValueError(f"cannot reach the study at {base} ({getattr(e, 'reason', e)}); is `metacog study "
                             "serve` running there?") from None

    ids = dict(zip(link_params, (participant_id, "simulated-study", f"{participant_id}-session")))
    status, _, page = request("/?" + urllib.parse.urlencode(ids))
    fields = dict(_FIELD.findall(page))
    if status != 200 or "csrf_token" not in fields:
        raise ValueError(f"{participant_id}: the start page at {base} answered {status} (is the study served with --entry=link?)")
    form = {"participant": participant_id, "study": "simulated-study", "session": f"{participant_id}-session",
            "csrf_token": fields["csrf_token"]}
    status, location, _ = request("/start", form)
    if status != 303:
        raise ValueError(f"{participant_id}: starting at {base} answered {status}")
    submitted = []
    while True:
        status, location, page = request("/item")
        if status == 303 and location.endswith("/done"):
            return submitted
        fields = dict(_FIELD.findall(page))
        if status != 200 or "item_id" not in fields:
            raise ValueError(f"{participant_id}: /item at {base} answered {status}")
        item_id = fields["item_id"]
        attention = _ATTENTION.search(page)
        if attention:
            percent, style = attention.group(1), "attention_check"
        else:
            shown = html.unescape(_EXPLANATION.search(page).group(1))
            item = items.get(item_id, {"explanations": {}})
            style = next((s for s, text in item["explanations"].items() if text == shown), None)
            if style is None:
                raise ValueError(f"the page of item {item_id!r} shows an explanation that is not in the items "
                                 "file given; pass the items.jsonl the server shows")
            r = rate(float(item["model_confidence"]), style, bias, noise_sd, rng)
            percent = f"{100 * r:.2f}"
        status, _, _ = request("/item", {"item_id": item_id, "rating": percent, "own_answer": "",
                                         "csrf_token": fields["csrf_token"]})
        if status != 303:
            raise ValueError(f"{participant_id}: the answer to {item_id} was refused ({status})")
        submitted.append(Submitted(participant_id, item_id, style, percent, bool(attention)))


def run_participants(base_url: str, items: Sequence[Mapping[str, Any]], n: int, *, concurrency: int = 8,
                     bias: Mapping[str, float] = DEFAULT_BIAS, noise_sd: float = 0.1, seed: int = 0,
                     prefix: str = "sim", link_params: Sequence[str] = ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID"),
                     timeout_s: float = 30.0) -> list[Submitted]:
    """Drives `n` simulated participants (ids prefix0, prefix1, ...) through the study at `base_url`
    (started with link entry), `concurrency` at a time; returns every accepted submission."""
    bias = check_bias(bias)
    by_id = {str(i["item_id"]): i for i in items}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(_participant, base_url, f"{prefix}{k}", by_id, bias, noise_sd, seed, link_params,
                               timeout_s) for k in range(n)]
        return [s for f in futures for s in f.result()]
