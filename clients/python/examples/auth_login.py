"""Auth service: sign a user up, then log in with the right and with a wrong password.

    QDATA_ADDRESS=127.0.0.1:50051 QDATA_TOKEN=qdt_... python auth_login.py --username dana

The calling service's token needs users.write (CreateUser) and users.authenticate (Authenticate).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys

from qdata.client import AlreadyExists, QdataClient
from qdata.v1 import user_pb2


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=os.environ.get("QDATA_ADDRESS", "127.0.0.1:50051"))
    parser.add_argument("--token", default=os.environ.get("QDATA_TOKEN"), help="default: $QDATA_TOKEN")
    parser.add_argument("--username", default=f"example-{secrets.token_hex(4)}")
    parser.add_argument("--password", default="a long enough password")
    return parser.parse_args()


def main() -> int:
    args = arguments()
    with QdataClient(args.address, token=args.token) as qdata:
        # Sign-up. The client fills in a request_id, so resending this same object after a
        # timeout or UNAVAILABLE cannot create a second user.
        signup = user_pb2.CreateUserRequest(
            email=f"{args.username}@example.com", username=args.username, password=args.password
        )
        try:
            created = qdata.users.CreateUser(signup)
            print(f"created user {created.user.username} id={created.user.id} request_id={signup.request_id}")
        except AlreadyExists as exc:  # reason EMAIL_TAKEN or USERNAME_TAKEN
            print(f"user {args.username} already exists ({exc.reason}); logging in")

        # Login. Failures are answers (outcome), not errors; every wrong password counts toward
        # the lockout, so a login front end never retries Authenticate on its own.
        for label, password in (("right password", args.password), ("wrong password", args.password + "!")):
            reply = qdata.users.Authenticate(user_pb2.AuthenticateRequest(login=args.username, password=password))
            outcome = user_pb2.AuthenticateOutcome.Name(reply.outcome)
            print(f"login with the {label}: {outcome}")
            if reply.outcome == user_pb2.AUTHENTICATE_OUTCOME_SUCCESS:
                print(f"  user id={reply.user.id} last login {reply.user.last_login_time.ToJsonString()}")
            elif reply.outcome == user_pb2.AUTHENTICATE_OUTCOME_LOCKED:
                print(f"  locked until {reply.locked_until_time.ToJsonString()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
