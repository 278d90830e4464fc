package config

import (
	"strings"
	"testing"
	"time"
)

// strategyEnv is an environment of four hosts with strategy s (one line).
func strategyEnv(s string) string {
	return head + "environments:\n  production:\n    strategy: " + s + "\n    hosts: [{host: web1}, {host: web2}, {host: web3}, {host: web4}]\n"
}

// TestStrategySettings: counts and percents, quoted or not, and the
// defaults rolling needs.
func TestStrategySettings(t *testing.T) {
	f := mustParse(t, strategyEnv("{type: rolling, batch: 25%, min_healthy: '75%', max_fail: \"1\", rollback_on_failure: true}"))
	s := f.Environments["production"].Strategy
	if s.Batch != Percent(25) || s.MinHealthy != Percent(75) || s.MaxFail != Count(1) || !s.RollbackOnFailure {
		t.Errorf("strategy %+v", s)
	}
	if time.Duration(s.DrainTimeout) != DefaultDrainTimeout {
		t.Errorf("drain_timeout default %s", time.Duration(s.DrainTimeout))
	}
	for _, typ := range []string{"two-phase", "all-at-once"} {
		if got := mustParse(t, strategyEnv("{type: "+typ+"}")).Environments["production"].Strategy.Type; got != StrategyAllAtOnce {
			t.Errorf("type %s is %s, want %s", typ, got, StrategyAllAtOnce)
		}
	}
	c := mustParse(t, strategyEnv("{type: canary, batch: 2, canary: {wait: 5m, url: 'https://shop/health'}}")).Environments["production"].Strategy
	if c.Type != StrategyCanary || c.Batch != Count(2) || c.Canary == nil || time.Duration(c.Canary.Wait) != 5*time.Minute || c.Canary.URL != "https://shop/health" {
		t.Errorf("canary strategy %+v", c)
	}
	// Without a check a canary waits for drover promote or drover abort.
	if c := mustParse(t, strategyEnv("{type: canary}")).Environments["production"].Strategy; c.Type != StrategyCanary || c.Canary != nil {
		t.Errorf("canary without a check %+v", c)
	}
	if got := mustParse(t, strategyEnv("{type: rolling}")).Environments["production"].Strategy.Batch; got != Count(1) {
		t.Errorf("rolling's default batch %s, want 1", got)
	}
}

// TestStrategyRefusals: a setting that is wrong, or that the strategy
// would not act on, is refused with its line and key.
func TestStrategyRefusals(t *testing.T) {
	tests := []struct {
		name, strategy, key, msg string
	}{
		{"bad amount", "{type: rolling, batch: two}", "batch", `"two" is not a number of hosts`},
		{"percent over 100", "{type: rolling, max_fail: 101%}", "max_fail", "more than 100%"},
		{"negative", "{type: rolling, batch: -1}", "batch", "is not a number of hosts"},
		{"zero batch", "{type: rolling, batch: 0}", "batch", "at least 1"},
		{"zero percent batch", "{type: rolling, batch: 0%}", "batch", "at least 1"},
		{"min_healthy of every host", "{type: rolling, min_healthy: 4}", "min_healthy", "no host could ever be taken out; make it at most 3"},
		{"min_healthy percent of every host", "{type: rolling, min_healthy: 80%}", "min_healthy", "no host could ever be taken out"},
		{"batch against min_healthy", "{type: rolling, batch: 2, min_healthy: 3}", "batch", "a batch of 2 of the 4 hosts leaves 2 serving, fewer than min_healthy 3 (3); make batch at most 1"},
		{"max_fail over the hosts", "{type: rolling, max_fail: 5}", "max_fail", "more than the environment's 4 hosts"},
		{"rolling key on all-at-once", "{type: all-at-once, max_fail: 1}", "max_fail", "applies to the rolling and serial strategies"},
		{"batch on serial", "{type: serial, batch: 2}", "batch", "serial activates one host at a time"},
		{"drain_timeout without load balancer", "{type: rolling, drain_timeout: 10s}", "drain_timeout", "no load_balancer"},
		{"min_healthy_time without load balancer", "{type: serial, min_healthy_time: 10s}", "min_healthy_time", "no load_balancer"},
		{"unknown type", "{type: blue-green}", "type", `unknown strategy "blue-green"`},
		{"unknown key", "{type: rolling, max_failures: 1}", "", `unknown key "max_failures"`},
		{"canary without wait", "{type: canary, canary: {url: 'http://shop/health'}}", "canary", "missing wait"},
		{"canary without check", "{type: canary, canary: {wait: 5m}}", "canary", "wait needs command"},
		{"canary bad url", "{type: canary, canary: {wait: 5m, url: shop/health}}", "canary.url", "is not an http"},
		{"canary on rolling", "{type: rolling, canary: {wait: 5m, command: 'true'}}", "canary", "applies to type: canary"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("drover.yml", []byte(strategyEnv(tc.strategy)))
			e := configError(t, err)
			if e.Line != 6 || !strings.Contains(e.Msg, tc.msg) || (tc.key != "" && e.Key != "environments.production.strategy."+tc.key) {
				t.Errorf("error %q (line %d, key %s), want line 6, key strategy.%s, saying %q", err, e.Line, e.Key, tc.key, tc.msg)
			}
		})
	}
}

// TestQuotedDurations: a duration in single or double quotes reads like a
// bare one ('30s' was refused as "'30s'" is not a duration).
func TestQuotedDurations(t *testing.T) {
	for _, q := range []string{"30s", "'30s'", `"30s"`} {
		f, err := Parse("drover.yml", []byte(head+"services:\n  web: {start: x, health: {http: 'http://x/', timeout: "+q+"}}\nenvironments:\n  p: {hosts: [{host: a}]}\n"))
		if err != nil {
			t.Errorf("timeout: %s: %v", q, err)
			continue
		}
		if got := time.Duration(f.Services["web"].Health.Timeout); got != 30*time.Second {
			t.Errorf("timeout: %s reads as %s", q, got)
		}
	}
}
