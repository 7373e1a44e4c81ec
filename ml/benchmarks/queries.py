"""Words the serving benchmarks draw shopper-like text queries from (``bench_serving``, the Locust user)."""

QUERY_WORDS = (
    "black",
    "white",
    "red",
    "denim",
    "leather",
    "cotton",
    "striped",
    "floral",
    "slim",
    "wide",
    "ankle",
    "boots",
    "dress",
    "shirt",
    "jacket",
    "skirt",
    "trousers",
    "bag",
    "scarf",
    "knit",
)
