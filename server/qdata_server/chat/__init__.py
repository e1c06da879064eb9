"""ChatService: sessions, messages in append order, branches, export and full-text search."""
