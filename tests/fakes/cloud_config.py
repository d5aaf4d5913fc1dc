"""The gateway config and environment for the cloud fakes (Azure OpenAI, Bedrock, Vertex AI):
providers `azure`, `azure-entra`, `bedrock`, `vertex` (and `bedrock-unset`, whose credentials are
never set), and the test models each fake understands (see each fake's docstring)."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.fakes import azure_upstream, bedrock_upstream
from tests.fakes.vertex_upstream import LOCATION, PROJECT, TOKEN_PREFIX, FakeVertex

MODELS = {
    "azure/gpt-4o": ("azure", "gpt4o-prod"),
    "azure/tools": ("azure", "tools-prod"),
    "azure/throttled": ("azure", "throttled"),
    "azure/filtered": ("azure", "filtered"),
    "azure-entra/gpt-4o": ("azure-entra", "gpt4o-prod"),
    "bedrock/claude": ("bedrock", "anthropic.claude-fake-v1:0"),
    "bedrock/tools": ("bedrock", "anthropic.claude-tools-v1:0"),
    "bedrock/throttled": ("bedrock", "fake.throttled"),
    "bedrock/invalid": ("bedrock", "fake.invalid"),
    "bedrock/stream-throttled": ("bedrock", "fake.stream-throttled"),
    "bedrock/corrupt": ("bedrock", "fake.corrupt"),
    "bedrock/cut": ("bedrock", "fake.cut"),
    "bedrock/stream-error": ("bedrock", "fake.stream-error"),
    "azure/cut": ("azure", "cut-prod"),
    "azure/error-event": ("azure", "error-prod"),
    "vertex/gemini-cut": ("vertex", "gemini-cut"),
    "vertex/gemini-error-event": ("vertex", "gemini-error-event"),
    "vertex/claude-cut": ("vertex", "claude-cut"),
    "vertex/claude-error-event": ("vertex", "claude-error-event"),
    "vertex/gemini": ("vertex", "gemini-fake"),
    "vertex/gemini-tools": ("vertex", "gemini-tools"),
    "vertex/gemini-exhausted": ("vertex", "gemini-exhausted"),
    "vertex/claude": ("vertex", "claude-fake"),
    "vertex/claude-tools": ("vertex", "claude-tools"),
}
SECRETS = [
    azure_upstream.API_KEY,
    azure_upstream.ENTRA_TOKEN,
    bedrock_upstream.SECRET_ACCESS_KEY,
    bedrock_upstream.SESSION_TOKEN,
    TOKEN_PREFIX,
    "PRIVATE KEY",
]


def cloud_config(azure: str, bedrock: str, vertex: str) -> str:
    tables = [
        f'[providers.azure]\nkind = "azure"\nbase_url = "{azure}"\n'
        'api_key_env = "KLAWD_TEST_AZURE_KEY"\napi_version = "2024-10-21"\n',
        f'[providers.azure-entra]\nkind = "azure"\nbase_url = "{azure}"\n'
        'entra_token_env = "KLAWD_TEST_AZURE_ENTRA"\n',
        f'[providers.bedrock]\nkind = "bedrock"\nregion = "{bedrock_upstream.REGION}"\n'
        f'base_url = "{bedrock}"\naccess_key_id_env = "KLAWD_TEST_AWS_KEY_ID"\n'
        'secret_access_key_env = "KLAWD_TEST_AWS_SECRET"\n'
        'session_token_env = "KLAWD_TEST_AWS_TOKEN"\nretry = { attempts = 2 }\n',
        f'[providers.vertex]\nkind = "vertex"\nproject = "{PROJECT}"\nlocation = "{LOCATION}"\n'
        f'base_url = "{vertex}"\ncredentials_file_env = "KLAWD_TEST_VERTEX_SA"\n',
        # a cloud whose credentials are not set: its models are unavailable, the gateway runs
        '[providers.bedrock-unset]\nkind = "bedrock"\nregion = "eu-west-1"\n'
        'access_key_id_env = "KLAWD_TEST_UNSET_1"\nsecret_access_key_env = "KLAWD_TEST_UNSET_2"\n',
        '[[models]]\nid = "bedrock-unset/claude"\nprovider = "bedrock-unset"\n',
        # one model, deployments on several clouds: Bedrock throttles, Vertex serves (tier 1)
        '[[models]]\nid = "cloud/claude"\ncontext_length = 100000\n'
        'input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\ncapabilities = ["tools"]\n'
        'deployments = [{ provider = "bedrock", upstream_model = "fake.throttled" }, '
        '{ provider = "vertex", upstream_model = "claude-fake", priority = 1 }]\n',
        # and two keys of one Azure deployment, weighted
        '[[models]]\nid = "cloud/gpt"\ncontext_length = 100000\n'
        "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n"
        'deployments = [{ provider = "azure", upstream_model = "gpt4o-prod", weight = 3 }, '
        '{ provider = "azure-entra", upstream_model = "gpt4o-prod" }]\n',
        '[[models]]\nid = "azure/embed"\nprovider = "azure"\nupstream_model = "embed-prod"\n'
        'kind = "embedding"\ninput_usd_per_mtok = 0.1\n',
        '[[models]]\nid = "azure/dalle"\nprovider = "azure"\nupstream_model = "dalle-prod"\n'
        'kind = "image"\nusd_per_image = 0.04\ncapabilities = ["images"]\n',
    ]
    for model_id, (provider, upstream) in MODELS.items():
        tables.append(
            f'[[models]]\nid = "{model_id}"\nprovider = "{provider}"\n'
            f'upstream_model = "{upstream}"\ncontext_length = 100000\n'
            "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n"
            'capabilities = ["tools", "vision"]\n'
        )
    return "\n".join(tables)


def cloud_env(fake_vertex: FakeVertex, directory: Path) -> dict[str, str]:
    """The credentials the gateway reads (the Vertex service account written to a file)."""
    account_file = directory / "service-account.json"
    account_file.write_bytes(orjson.dumps(fake_vertex.service_account_info()))
    return {
        "KLAWD_TEST_AZURE_KEY": azure_upstream.API_KEY,
        "KLAWD_TEST_AZURE_ENTRA": azure_upstream.ENTRA_TOKEN,
        "KLAWD_TEST_AWS_KEY_ID": bedrock_upstream.ACCESS_KEY_ID,
        "KLAWD_TEST_AWS_SECRET": bedrock_upstream.SECRET_ACCESS_KEY,
        "KLAWD_TEST_AWS_TOKEN": bedrock_upstream.SESSION_TOKEN,
        "KLAWD_TEST_VERTEX_SA": str(account_file),
    }
