"""The OpenAI Responses API in front of every chat model: translation (translate.py), the
Response object (answer.py) and streams (events.py); the handler is gateway/api/responses.py."""
