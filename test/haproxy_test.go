//go:build integration

package test

import "time"

// hapInter is how often the tests' HAProxy checks each server's health
// (internal/testenv/haproxytest: rise 2, fall 2); its view of the fleet is
// read through haproxytest's Stats, Retries and WaitServers.
const hapInter = 200 * time.Millisecond
