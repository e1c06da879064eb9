"""UsageService: model catalog and prices, usage recording and billing, statistics, ratings."""
