"""The policy studio (`veil studio`): a small web app for the people who own the policies.

It shows what the gateway would do by running the gateway's own code: the policy loader, the
detection engine and the protect stage, the cases runner, the audit verifier and the
attestation verifier. Plain HTML, CSS and JavaScript under `static/`; nothing to build.
"""
