"""The test kit: real servers, real gateways, span builders, cgroups and peers, shared by
the test tiers and the benchmarks under one import name (`testkit`)."""
