"""UserService: accounts, login, profile and preferences."""
