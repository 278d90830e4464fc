package config

import (
	"strings"
	"testing"
	"time"
)

func parseEnv(env string) (*File, error) {
	return Parse("drover.yml", []byte(head+"hooks:\n  prepare: [a]\nenvironments:\n"+env))
}

// TestLoadBalancerAccepted: each load balancer type decodes with its keys.
func TestLoadBalancerAccepted(t *testing.T) {
	tests := []struct {
		name, lb string
		want     LoadBalancer
	}{
		{"haproxy unix socket", "{type: haproxy, socket: /run/haproxy/admin.sock, backend: shop}",
			LoadBalancer{Type: "haproxy", Socket: "/run/haproxy/admin.sock", Backend: "shop"}},
		{"haproxy tcp socket", "{type: haproxy, socket: \"tcp:10.0.0.2:9999\", backend: shop, timeout: 2s}",
			LoadBalancer{Type: "haproxy", Socket: "tcp:10.0.0.2:9999", Backend: "shop", Timeout: Duration(2 * time.Second)}},
		{"command", "{type: command, drain: \"lbctl off {{member}}\", enable: \"lbctl on {{member}}\", status: lbctl ls}",
			LoadBalancer{Type: "command", Drain: "lbctl off {{member}}", Enable: "lbctl on {{member}}", Status: "lbctl ls"}},
		{"elbv2", "{type: elbv2, target_group_arn: \"arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/shop/abc\"}",
			LoadBalancer{Type: "elbv2", TargetGroupARN: "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/shop/abc"}},
		{"elbv2 with region and endpoint", "{type: elbv2, target_group_arn: \"arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/shop/abc\", region: eu-west-1, endpoint: \"https://vpce-1.elasticloadbalancing.eu-west-1.vpce.amazonaws.com\"}",
			LoadBalancer{Type: "elbv2", TargetGroupARN: "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/shop/abc", Region: "eu-west-1", Endpoint: "https://vpce-1.elasticloadbalancing.eu-west-1.vpce.amazonaws.com"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseEnv("  production:\n    strategy: {type: rolling}\n    load_balancer: " + tc.lb + "\n    hosts: [{host: web1}, {host: web2}]\n")
			if err != nil {
				t.Fatal(err)
			}
			got := f.Environments["production"].LoadBalancer
			if got == nil || *got != tc.want {
				t.Errorf("load_balancer = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestLoadBalancerRefused: a missing, misplaced or malformed key is an error
// naming the file, line and key.
func TestLoadBalancerRefused(t *testing.T) {
	const p = "environments.production.load_balancer"
	tests := []struct {
		name, lb string
		line     int
		key, msg string
	}{
		{"empty", "{}", 8, p, "missing required key type"},
		{"unknown type", "{type: nginx}", 8, p + ".type", `unknown load balancer type "nginx"; use haproxy, command or elbv2`},
		{"haproxy without socket", "{type: haproxy, backend: shop}", 8, p, "missing required key socket"},
		{"haproxy without backend", "{type: haproxy, socket: /run/h.sock}", 8, p, "missing required key backend"},
		{"haproxy relative socket", "{type: haproxy, socket: run/h.sock, backend: shop}", 8, p + ".socket", "absolute path or tcp:HOST:PORT"},
		{"haproxy bad tcp socket", "{type: haproxy, socket: \"tcp:10.0.0.2\", backend: shop}", 8, p + ".socket", "tcp:HOST:PORT"},
		{"haproxy backend with a slash", "{type: haproxy, socket: /h.sock, backend: a/b}", 8, p + ".backend", "not a HAProxy backend name"},
		{"haproxy with a command key", "{type: haproxy, socket: /h.sock, backend: shop, drain: x}", 8, p + ".drain", "does not apply to type haproxy"},
		{"command without status", "{type: command, drain: a, enable: b}", 8, p, "missing required key status"},
		{"command with a blank drain", "{type: command, drain: \" \", enable: b, status: c}", 8, p, "missing required key drain"},
		{"command with an elbv2 key", "{type: command, drain: a, enable: b, status: c, region: eu-west-1}", 8, p + ".region", "does not apply to type command"},
		{"elbv2 without arn", "{type: elbv2}", 8, p, "missing required key target_group_arn"},
		{"elbv2 bad arn", "{type: elbv2, target_group_arn: shop}", 8, p + ".target_group_arn", "not a target group ARN"},
		{"elbv2 bad endpoint", "{type: elbv2, target_group_arn: \"arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/a/b\", endpoint: localhost:4566}", 8, p + ".endpoint", "http:// or https:// URL"},
		{"zero timeout", "{type: haproxy, socket: /h.sock, backend: shop, timeout: 0s}", 8, p + ".timeout", "must be more than 0"},
		{"unknown key", "{type: haproxy, socket: /h.sock, backend: shop, sockets: /x}", 8, "", "sockets"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseEnv("  production:\n    load_balancer: " + tc.lb + "\n    hosts: [{host: web1}]\n")
			e := configError(t, err)
			if e.Line != tc.line || (tc.key != "" && e.Key != tc.key) || !strings.Contains(err.Error(), tc.msg) || !strings.HasPrefix(err.Error(), "drover.yml:8:") {
				t.Errorf("error %q (line %d, key %s), want line %d, key %s, saying %q", err, e.Line, e.Key, tc.line, tc.key, tc.msg)
			}
		})
	}
}

// TestMemberName: lb_name, else name, else the host's address; two hosts
// of one environment may not share a member name.
func TestMemberName(t *testing.T) {
	f, err := parseEnv("  production:\n    hosts:\n      - {host: 10.0.0.5}\n      - {host: 10.0.0.6, name: web2}\n      - {host: 10.0.0.7, name: web3, lb_name: i-0abc}\n")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range f.Environments["production"].Hosts {
		got = append(got, h.MemberName())
	}
	if strings.Join(got, " ") != "10.0.0.5 web2 i-0abc" {
		t.Errorf("member names %v", got)
	}
	if n := (&Host{Host: "10.0.0.9"}).MemberName(); n != "10.0.0.9" {
		t.Errorf("MemberName of a bare host = %q", n)
	}
	_, err = parseEnv("  production:\n    hosts:\n      - {host: 10.0.0.5, lb_name: web}\n      - {host: 10.0.0.6, name: web}\n")
	e := configError(t, err)
	if e.Line != 10 || !strings.Contains(e.Msg, `member name "web"`) {
		t.Errorf("shared member name: %v (line %d)", err, e.Line)
	}
	_, err = parseEnv("  production:\n    hosts:\n      - {host: 10.0.0.5, lb_name: \"web 1\"}\n")
	if e := configError(t, err); e.Key != "environments.production.hosts[0].lb_name" {
		t.Errorf("lb_name with a blank: %v", err)
	}
}
