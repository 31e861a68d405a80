"""The agent's read-only HTTP API: the response types and their version (contract), how they
are filled from an AgentSnapshot and a HostSnapshot (views, metrics, host), and the server.
openapi.yaml beside these files documents it; tests/unit/test_api_contract.py keeps the two in step.
"""
