"""The controllers: watch-fed state and queues that ask `core` what to do and apply it through
`kube` and `issuers`."""
