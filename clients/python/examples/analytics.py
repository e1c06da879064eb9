"""Analytics: a user's usage over the last days, and the statistics of each model they used.

    QDATA_ADDRESS=127.0.0.1:50051 QDATA_TOKEN=qdt_... python analytics.py --user alice --days 30

The calling service's token needs users.read (GetUser) and usage.read.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from google.protobuf import duration_pb2, timestamp_pb2

from qdata.client import QdataClient
from qdata.v1 import usage_pb2, user_pb2


def units(amount_micros: int) -> str:
    whole, fraction = divmod(amount_micros, 1_000_000)
    return f"{whole}.{fraction:06d}"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=os.environ.get("QDATA_ADDRESS", "127.0.0.1:50051"))
    parser.add_argument("--token", default=os.environ.get("QDATA_TOKEN"), help="default: $QDATA_TOKEN")
    parser.add_argument("--user", default="alice", help="username (default: alice of the sample data)")
    parser.add_argument("--days", type=int, default=30)
    return parser.parse_args()


def main() -> int:
    args = arguments()
    start = timestamp_pb2.Timestamp(seconds=int(time.time()) - args.days * 86_400)
    with QdataClient(args.address, token=args.token) as qdata:
        user_id = qdata.users.GetUser(user_pb2.GetUserRequest(username=args.user)).user.id
        usage = qdata.usage.GetUserUsage(usage_pb2.GetUserUsageRequest(user_id=user_id, start_time=start))
        totals = usage.totals
        print(
            f"{args.user} over {args.days} days: requests={totals.request_count} errors={totals.error_count}"
            f" tokens={totals.total_tokens} billed={units(totals.billed_micros)} {usage.currency_code}"
        )
        for day in usage.days:
            print(f"  {day.day_start_time.ToJsonString()[:10]} requests={day.totals.request_count}")
        for model in usage.models:
            print(f"  model {model.model_id}: requests={model.totals.request_count} tokens={model.totals.total_tokens}")
            stats = qdata.usage.GetModelStats(
                usage_pb2.GetModelStatsRequest(
                    model_id=model.model_id, window=duration_pb2.Duration(seconds=args.days * 86_400)
                )
            ).stats
            p50 = f"{stats.latency_p50.ToMilliseconds()} ms" if stats.HasField("latency_p50") else "n/a"
            print(
                f"    all users: requests={stats.request_count} users={stats.unique_users}"
                f" error_rate={stats.error_rate:.2f} p50={p50}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
