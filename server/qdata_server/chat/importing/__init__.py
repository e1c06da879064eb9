"""ImportSession: conversations exported by other chat products, stored as qdata sessions.

- model.py: the normalized conversation every format parses into, the limits, BadExport (the
  JSON path of the first bad node) and the note that keeps unknown content as text;
- chatgpt.py, librechat.py, open_webui.py: one parser per format, each reading the product's
  published export structure and checking it node by node in document order;
- tree.py: skipped nodes, the order of the messages (parents first, then by time), their places
  (depth and jump pointer, chat/tree.py), the current leaf, the depth limit and the digest;
- run.py: the RPC: parse off the event loop, then one transaction that claims the source
  conversation's id, creates the session and inserts every message in one statement.
"""
