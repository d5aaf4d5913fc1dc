"""Copy-paste quick starts, filled in with this gateway's base URL and the chosen model.

The key is a placeholder (`$KLAWD_API_KEY`): keys are shown once, at creation, never again.
"""

from __future__ import annotations

import orjson


def snippets(base_url: str, model: str) -> dict[str, str]:
    body = orjson.dumps(
        {"model": model, "messages": [{"role": "user", "content": "Hello, Klawd!"}]}
    ).decode()
    url = orjson.dumps(base_url).decode()
    model_json = orjson.dumps(model).decode()
    return {
        "curl": (
            f"curl {base_url}/chat/completions \\\n"
            '  -H "Authorization: Bearer $KLAWD_API_KEY" \\\n'
            "  -H 'Content-Type: application/json' \\\n"
            f"  -d '{body}'"
        ),
        "python": (
            "# pip install openai\n"
            "import os\n"
            "from openai import OpenAI\n\n"
            f'client = OpenAI(base_url={url}, api_key=os.environ["KLAWD_API_KEY"])\n'
            "reply = client.chat.completions.create(\n"
            f"    model={model_json},\n"
            '    messages=[{"role": "user", "content": "Hello, Klawd!"}],\n'
            ")\n"
            "print(reply.choices[0].message.content)"
        ),
        "typescript": (
            "// npm install openai\n"
            'import OpenAI from "openai";\n\n'
            f"const client = new OpenAI({{ baseURL: {url}, apiKey: process.env.KLAWD_API_KEY }});\n"
            "const reply = await client.chat.completions.create({\n"
            f"  model: {model_json},\n"
            '  messages: [{ role: "user", content: "Hello, Klawd!" }],\n'
            "});\n"
            "console.log(reply.choices[0].message.content);"
        ),
    }
