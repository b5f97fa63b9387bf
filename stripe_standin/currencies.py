"""Currencies the stand-in accepts, their minimum charge amounts and how Stripe prints amounts."""

from __future__ import annotations

#: Presentment currencies Stripe supports (lowercase ISO 4217).
_SUPPORTED_CODES = """
    usd aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bif bmd bnd bob brl bsd bwp byn
    bzd cad cdf chf clp cny cop crc cve czk djf dkk dop dzd egp etb eur fjd fkp gbp gel gip gmd
    gnf gtq gyd hkd hnl htg huf idr ils inr isk jmd jpy kes kgs khr kmf krw kyd kzt lak lbp lkr
    lrd lsl mad mdl mga mkd mmk mnt mop mur mvr mwk mxn myr mzn nad ngn nio nok npr nzd pab pen
    pgk php pkr pln pyg qar ron rsd rub rwf sar sbd scr sek sgd shp sle sos srd std szl thb tjs
    top try ttd twd tzs uah ugx uyu uzs vnd vuv wst xaf xcd xof xpf yer zar zmw
"""
SUPPORTED = frozenset(_SUPPORTED_CODES.split())

#: Currencies whose amounts are in whole units (no cents).
_ZERO_DECIMAL_CODES = "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf"
ZERO_DECIMAL = frozenset(_ZERO_DECIMAL_CODES.split())

#: Minimum charge amounts in the smallest currency unit (Stripe's published table).
MINIMUM_AMOUNT = {
    "usd": 50,
    "aed": 200,
    "aud": 50,
    "bgn": 100,
    "brl": 50,
    "cad": 50,
    "chf": 50,
    "czk": 1500,
    "dkk": 250,
    "eur": 50,
    "gbp": 30,
    "hkd": 400,
    "huf": 17500,
    "inr": 50,
    "jpy": 50,
    "mxn": 1000,
    "myr": 200,
    "nok": 300,
    "nzd": 50,
    "pln": 200,
    "ron": 200,
    "sek": 300,
    "sgd": 50,
    "thb": 1000,
}
DEFAULT_MINIMUM_AMOUNT = 50

#: Largest amount Stripe accepts, in the smallest currency unit.
MAXIMUM_AMOUNT = 99_999_999

_SYMBOLS = {
    "usd": "$",
    "aud": "$",
    "cad": "$",
    "nzd": "$",
    "sgd": "$",
    "hkd": "$",
    "mxn": "$",
    "eur": "€",
    "gbp": "£",
    "jpy": "¥",
}


def minimum_amount(currency: str) -> int:
    """Smallest amount Stripe charges in ``currency``."""
    return MINIMUM_AMOUNT.get(currency, DEFAULT_MINIMUM_AMOUNT)


def format_amount(amount: int, currency: str) -> str:
    """Format an amount the way Stripe's error messages do, e.g. ``$0.50``, ``¥50``."""
    symbol = _SYMBOLS.get(currency, "")
    if currency in ZERO_DECIMAL:
        return f"{symbol}{amount:,}"
    return f"{symbol}{amount // 100:,}.{amount % 100:02d}"
