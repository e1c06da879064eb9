"""Recommendation engine: read the most used and the best rated models, and a model's ratings.

    QDATA_ADDRESS=127.0.0.1:50051 QDATA_TOKEN=qdt_... python recommendations.py --days 7

The calling service's token needs usage.read, nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys

from google.protobuf import duration_pb2

from qdata.client import QdataClient
from qdata.v1 import usage_pb2


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=os.environ.get("QDATA_ADDRESS", "127.0.0.1:50051"))
    parser.add_argument("--token", default=os.environ.get("QDATA_TOKEN"), help="default: $QDATA_TOKEN")
    parser.add_argument("--days", type=int, default=7, help="window of the ranking, ending now")
    parser.add_argument("--limit", type=int, default=5)
    return parser.parse_args()


def main() -> int:
    args = arguments()
    window = duration_pb2.Duration(seconds=args.days * 86_400)
    with QdataClient(args.address, token=args.token) as qdata:
        for metric in (usage_pb2.MODEL_METRIC_REQUESTS, usage_pb2.MODEL_METRIC_RATING):
            top = qdata.usage.ListTopModels(
                usage_pb2.ListTopModelsRequest(metric=metric, window=window, limit=args.limit)
            )
            print(f"top models by {usage_pb2.ModelMetric.Name(metric).removeprefix('MODEL_METRIC_').lower()}:")
            for model in top.models:
                print(
                    f"  {model.rank}. {model.model_id} requests={model.request_count}"
                    f" rating={model.average_rating:.2f} ({model.rating_count} ratings) growth={model.growth:+.2f}"
                )
            if not top.models:
                print("  (no model has a value for this metric in the window)")

        best = qdata.usage.ListTopModels(
            usage_pb2.ListTopModelsRequest(metric=usage_pb2.MODEL_METRIC_RATING, window=window, limit=1)
        ).models
        if best:
            # Ratings page with opaque tokens; read them all.
            model_id, token = best[0].model_id, ""
            print(f"ratings of {model_id}:")
            while True:
                page = qdata.usage.ListModelRatings(
                    usage_pb2.ListModelRatingsRequest(model_id=model_id, page_size=100, page_token=token)
                )
                for rating in page.ratings:
                    print(f"  {rating.stars} stars by {rating.user_id}: {rating.review or '(no review)'}")
                token = page.next_page_token
                if not token:
                    break
    return 0


if __name__ == "__main__":
    sys.exit(main())
