"""Writes the example tables next to this file, the same bytes on every run (seeded; numpy and pandas only).

    .venv/bin/python examples/make_examples.py

- houses.csv: regression; the target `price` depends on area, rooms, age, distance and district, with noise.
- churn.csv: binary classification; the target `churned` ("yes"/"no") depends on tenure, charges,
  support calls, contract and payment, through a noisy logistic model.
Both have about 5 % missing values in one numeric and one text column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROWS = 2000
SEED = 20240917
MISSING_SHARE = 0.05

DISTRICT_PRICE_FACTOR = {"Centre": 1.45, "Old Town": 1.3, "Harbour": 1.2, "Riverside": 1.1,
                         "Hillside": 0.95, "Suburbs": 0.8}
CONTRACT_CHURN_LOGIT = {"monthly": 1.2, "yearly": -0.8, "two-year": -2.0}
PAYMENT_CHURN_LOGIT = {"card": 0.0, "bank transfer": -0.3, "invoice": 0.5, "paypal": 0.2}


def with_missing(rng: np.random.Generator, column: pd.Series) -> pd.Series:
    """The column with MISSING_SHARE of its values blanked out at random."""
    return column.mask(rng.random(len(column)) < MISSING_SHARE)


def houses(rng: np.random.Generator) -> pd.DataFrame:
    districts = np.array(list(DISTRICT_PRICE_FACTOR))
    district = rng.choice(districts, ROWS, p=[0.12, 0.13, 0.15, 0.18, 0.2, 0.22])
    rooms = rng.integers(1, 8, ROWS)
    area = np.round(rooms * rng.uniform(18, 32, ROWS) + rng.normal(10, 6, ROWS), 1).clip(20)
    age = rng.integers(0, 101, ROWS)
    distance = np.round(rng.gamma(2.0, 3.0, ROWS) + 0.2, 2)
    factor = np.array([DISTRICT_PRICE_FACTOR[name] for name in district])
    wear = 1 - 0.004 * age + 0.00006 * (age - 60).clip(0) ** 2  # old houses lose value, historic ones win some back
    value = 2800 * area * factor * wear * np.exp(-0.035 * distance) + 8000 * rooms
    price = (np.round(value * rng.lognormal(0, 0.1, ROWS), -2)).astype(int)
    return pd.DataFrame({
        "area": area,
        "rooms": rooms,
        "age": with_missing(rng, pd.Series(age, dtype="Int64")),
        "distance": distance,
        "district": with_missing(rng, pd.Series(district, dtype=object)),
        "price": price,
    })


def churn(rng: np.random.Generator) -> pd.DataFrame:
    tenure = rng.integers(1, 73, ROWS)
    monthly_charges = np.round(rng.uniform(18, 120, ROWS), 2)
    support_calls = rng.poisson(1.5, ROWS)
    contract = rng.choice(list(CONTRACT_CHURN_LOGIT), ROWS, p=[0.5, 0.3, 0.2])
    payment = rng.choice(list(PAYMENT_CHURN_LOGIT), ROWS)
    logit = (-0.4 - 0.06 * tenure + 0.03 * (monthly_charges - 60) + 0.6 * support_calls
             + np.array([CONTRACT_CHURN_LOGIT[name] for name in contract])
             + np.array([PAYMENT_CHURN_LOGIT[name] for name in payment])
             + rng.normal(0, 0.5, ROWS))  # what the table doesn't record: keeps it learnable, not trivial
    churned = np.where(rng.random(ROWS) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pd.DataFrame({
        "tenure_months": tenure,
        "monthly_charges": with_missing(rng, pd.Series(monthly_charges)),
        "support_calls": support_calls,
        "contract": contract,
        "payment": with_missing(rng, pd.Series(payment, dtype=object)),
        "churned": churned,
    })


def main() -> None:
    rng = np.random.default_rng(SEED)
    for name, table in (("houses.csv", houses(rng)), ("churn.csv", churn(rng))):
        table.to_csv(HERE / name, index=False)
        print(f"wrote {HERE / name}: {len(table)} rows, {(HERE / name).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
