"""Which catalog model can take over another's work: curated, because the catalog holds prices, not capabilities.

`SMALLER` names, for a model, the next smaller model of the same provider and
family (the one a team would try first for short, simple requests).
`SAME_FAMILY` names newer models of the same family and size that the catalog
prices lower (a like-for-like replacement, not a downgrade). Keys and values
are canonical catalog names.
"""

from __future__ import annotations

_HAIKU_35 = "anthropic.claude-3-5-haiku-20241022-v1:0"

SMALLER: dict[tuple[str, str], str] = {
    ("openai", "gpt-4"): "gpt-4o-mini",
    ("openai", "gpt-4-32k"): "gpt-4o-mini",
    ("openai", "gpt-4-turbo"): "gpt-4o-mini",
    ("openai", "gpt-4o"): "gpt-4o-mini",
    ("openai", "gpt-4o-2024-05-13"): "gpt-4o-mini",
    ("openai", "gpt-4o-2024-08-06"): "gpt-4o-mini",
    ("openai", "gpt-3.5-turbo"): "gpt-4o-mini",
    ("openai", "gpt-3.5-turbo-0125"): "gpt-4o-mini",
    ("openai", "gpt-3.5-turbo-0613"): "gpt-4o-mini",
    ("openai", "gpt-3.5-turbo-1106"): "gpt-4o-mini",
    ("openai", "gpt-3.5-turbo-16k"): "gpt-4o-mini",
    ("openai", "gpt-4.1"): "gpt-4.1-mini",
    ("openai", "gpt-4.1-mini"): "gpt-4.1-nano",
    ("openai", "o1"): "o3-mini",
    ("openai", "o1-preview"): "o3-mini",
    ("openai", "o3"): "o4-mini",
    ("openai", "text-embedding-3-large"): "text-embedding-3-small",
    ("openai", "text-embedding-ada-002"): "text-embedding-3-small",
    ("gemini", "gemini-2.5-pro"): "gemini-2.5-flash",
    ("gemini", "gemini-2.5-flash"): "gemini-2.0-flash",
    ("gemini", "gemini-2.0-flash"): "gemini-2.0-flash-lite",
    ("gemini", "gemini-1.5-pro"): "gemini-1.5-flash",
    ("gemini", "gemini-1.0-pro"): "gemini-1.5-flash",
    ("bedrock", "anthropic.claude-3-opus-20240229-v1:0"): _HAIKU_35,
    ("bedrock", "anthropic.claude-3-sonnet-20240229-v1:0"): _HAIKU_35,
    ("bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0"): _HAIKU_35,
    ("bedrock", "anthropic.claude-3-5-sonnet-20241022-v2:0"): _HAIKU_35,
    ("bedrock", "anthropic.claude-3-7-sonnet-20250219-v1:0"): _HAIKU_35,
    ("bedrock", "anthropic.claude-sonnet-4-20250514-v1:0"): _HAIKU_35,
    ("bedrock", _HAIKU_35): "anthropic.claude-3-haiku-20240307-v1:0",
    ("bedrock", "meta.llama3-1-405b-instruct-v1:0"): "meta.llama3-1-70b-instruct-v1:0",
    ("bedrock", "meta.llama3-1-70b-instruct-v1:0"): "meta.llama3-1-8b-instruct-v1:0",
    ("bedrock", "meta.llama3-3-70b-instruct-v1:0"): "meta.llama3-1-8b-instruct-v1:0",
    ("bedrock", "meta.llama3-70b-instruct-v1:0"): "meta.llama3-8b-instruct-v1:0",
    ("bedrock", "meta.llama3-2-90b-instruct-v1:0"): "meta.llama3-2-11b-instruct-v1:0",
    ("bedrock", "meta.llama3-2-11b-instruct-v1:0"): "meta.llama3-2-3b-instruct-v1:0",
    ("bedrock", "meta.llama3-2-3b-instruct-v1:0"): "meta.llama3-2-1b-instruct-v1:0",
    ("bedrock", "amazon.titan-text-premier-v1:0"): "amazon.titan-text-express-v1",
    ("bedrock", "amazon.titan-text-express-v1"): "amazon.titan-text-lite-v1",
    ("bedrock", "amazon.titan-embed-text-v1"): "amazon.titan-embed-text-v2:0",
}

SAME_FAMILY: dict[tuple[str, str], tuple[str, ...]] = {
    ("bedrock", "meta.llama3-70b-instruct-v1:0"): ("meta.llama3-3-70b-instruct-v1:0",),
    ("bedrock", "meta.llama3-1-70b-instruct-v1:0"): ("meta.llama3-3-70b-instruct-v1:0",),
    ("bedrock", "meta.llama3-8b-instruct-v1:0"): ("meta.llama3-1-8b-instruct-v1:0",),
}
