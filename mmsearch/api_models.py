"""The HTTP API's parameters and answers as typed models: what `/openapi.json` documents.

The server validates every parameter against these types (FastAPI) and words a refused one
from `MUST_BE`. Answers are built as plain dicts and sent without validation (a search
answers in milliseconds; checking every result would cost more than ranking it); the tests
validate real answers against these models, so the document stays the truth. Answer models
allow fields beyond the ones named here: the engine may add more, and so may the contract.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

MAX_K = 100
DEFAULT_K = 10

# A parameter's declared type and bounds; FastAPI refuses a value outside them.
ResultCount = Annotated[int, Field(ge=1, le=MAX_K)]
Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]
# What a refused parameter must be, as its one-line error says it.
MUST_BE = {
    "k": f"a whole number from 1 to {MAX_K}",
    "max_price": "a finite number >= 0",
    "group": "true or false",
    "include_unavailable": "true or false",
    "image": "a file upload (a multipart file field holding the photo)",
}


def blank_means(default: Any) -> BeforeValidator:
    """A query parameter sent empty (`k=`) takes its default, as an empty form field does."""
    return BeforeValidator(lambda value: default if value == "" else value)


def invalid_parameter(error: dict) -> str:
    """One line naming the parameter and what it must be, from one of FastAPI's
    validation errors (`{"loc": ("query", "k"), "input": "ten", "msg": ...}`)."""
    location = [str(part) for part in error.get("loc", ()) if part not in ("query", "body")]
    name = ".".join(location) or "request"
    if name in MUST_BE:
        return f"{name} must be {MUST_BE[name]}, not {error.get('input')!r}"
    return f"{name}: {error.get('msg', 'invalid')}"


class Answer(BaseModel):
    """An answer that may carry fields added after this model was written."""

    model_config = ConfigDict(extra="allow")


class ErrorAnswer(BaseModel):
    """Every 4xx and 5xx answer."""

    error: str = Field(description="one line saying what is wrong (and, for a filter, what exists)")


class Health(Answer):
    status: Literal["ok"]
    model_version: str = Field(description="the live model")
    index_version: str = Field(description="the live release's index")
    currency: str = Field(description="ISO 4217 code of every price in the answers")
    products: int = Field(description="live products in the index")


class Variant(Answer):
    """Another product of a result's group: its offer and the attributes whose values differ
    from the result's (`"color": "Blue"`)."""

    product_id: str
    price: float | None = None
    list_price: float | None = None
    availability: str | None = None


class SearchResult(Answer):
    product_id: str
    score: float = Field(
        description="the ranker's score: comparable within one answer, not across queries "
        "(the search page shows it only with ?debug=1)"
    )
    title: str
    category: str | None
    brand: str | None
    price: float | None = Field(description="the price that filters and shows (a sale price)")
    image_url: str | None = Field(
        description="the product's picture on this server "
        "(/api/products/{product_id}/image), or null when it has none"
    )
    matched: dict[str, str] = Field(
        description="the product's category, brand and attributes whose every word is in the "
        "query text, by name (empty for similar products)",
    )
    list_price: float | None = Field(
        default=None, description="the regular price while `price` is a sale price"
    )
    currency: str | None = Field(
        default=None, description="ISO 4217 code of this product's price, when the catalog gave one"
    )
    availability: str | None = Field(
        default=None, description="in_stock, out_of_stock, preorder or backorder, if known"
    )
    group_id: str | None = Field(default=None, description="the group of variants it belongs to")
    variants: list[Variant] | None = Field(
        default=None, description="the group's other products, when results are grouped"
    )


class PriceRange(BaseModel):
    min: float
    max: float


class Facets(Answer):
    """Counts over the candidates the ranker chose from, so a page offers filters that exist;
    besides `categories` and `price`, one map per product attribute (`color`: {value: count})."""

    __pydantic_extra__: dict[str, dict[str, int]]
    categories: dict[str, int] = Field(description="category -> candidates in it")
    price: PriceRange | None = Field(description="the candidates' price range; null if none")


class SearchAnswer(Answer):
    model_version: str
    index_version: str
    currency: str = Field(description="ISO 4217 code of every price in the answer")
    results: list[SearchResult] = Field(description="best first")
    facets: Facets


class SimilarAnswer(Answer):
    product_id: str = Field(description="the product asked about (never among the results)")
    model_version: str
    index_version: str
    currency: str = Field(description="ISO 4217 code of every price in the answer")
    results: list[SearchResult] = Field(description="most alike first")
