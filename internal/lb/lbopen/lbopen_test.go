package lbopen_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/lb"
	"github.com/drover/drover/internal/lb/haproxy"
	"github.com/drover/drover/internal/lb/lbopen"
	"github.com/drover/drover/internal/testenv/elbv2fake"
	"github.com/drover/drover/internal/testenv/haproxytest"
)

// open parses a drover.yml whose production environment has the given
// load_balancer and hosts, and opens its balancer.
func open(t *testing.T, lbYAML, hosts string) (lb.Balancer, *config.Environment) {
	t.Helper()
	yml := "app: shop\nrepo: /tmp/shop.git\ndeploy_to: /srv/shop\nenvironments:\n  production:\n    strategy: {type: rolling}\n    load_balancer: " + lbYAML + "\n    hosts: " + hosts + "\n"
	f, err := config.Parse("drover.yml", []byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	env := f.Environments["production"]
	b, err := lbopen.Open(context.Background(), env.LoadBalancer)
	if err != nil {
		t.Fatal(err)
	}
	return b, env
}

// servingNames returns the members' names that serve, in order.
func servingNames(t *testing.T, b lb.Balancer) string {
	t.Helper()
	ms, err := b.Members(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		if m.Serving() {
			out = append(out, m.Name)
		}
	}
	return strings.Join(out, " ")
}

// TestOpenHAProxy: from drover.yml to a real HAProxy, the hosts' member
// names (lb_name, else name) are HAProxy's server names.
func TestOpenHAProxy(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	hp := haproxytest.Start(t, haproxytest.Options{Backend: "shop", Servers: []haproxytest.Server{{Name: "web1", Addr: addr}, {Name: "web2", Addr: addr}}})
	b, env := open(t, fmt.Sprintf("{type: haproxy, socket: %s, backend: shop, timeout: 2s}", hp.Socket),
		"[{host: 10.0.0.5, name: web1}, {host: 10.0.0.6, lb_name: web2}]")
	if got := b.(*haproxy.Balancer).Timeout; got != 2*time.Second {
		t.Errorf("timeout %s, want 2s from drover.yml", got)
	}
	if got := servingNames(t, b); got != "web1 web2" {
		t.Errorf("serving %q", got)
	}
	if err := b.Drain(context.Background(), env.Hosts[1].MemberName()); err != nil {
		t.Fatal(err)
	}
	if got := servingNames(t, b); got != "web1" {
		t.Errorf("after draining %s serving %q", env.Hosts[1].MemberName(), got)
	}
}

func TestOpenCommand(t *testing.T) {
	b, _ := open(t, `{type: command, drain: "true", enable: "true", status: "printf 'web1 up 0\\nweb2 drain 1\\n'"}`, "[{host: web1}, {host: web2}]")
	if got := servingNames(t, b); got != "web1" {
		t.Errorf("serving %q", got)
	}
}

// TestOpenELBv2: the SDK's default credential chain and the endpoint key
// reach the local ELBv2 fake.
func TestOpenELBv2(t *testing.T) {
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "",
		"AWS_PROFILE": "", "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
		"AWS_EC2_METADATA_DISABLED": "true", "AWS_REGION": "", "AWS_DEFAULT_REGION": "",
	} {
		t.Setenv(k, v)
	}
	f := elbv2fake.Start(t, elbv2fake.Options{Targets: []elbv2fake.Target{{ID: "i-1"}, {ID: "i-2"}}})
	b, _ := open(t, fmt.Sprintf("{type: elbv2, target_group_arn: %q, endpoint: %q}", f.ARN, f.URL), "[{host: 10.0.0.5, lb_name: i-1}, {host: 10.0.0.6, lb_name: i-2}]")
	if got := servingNames(t, b); got != "i-1 i-2" {
		t.Errorf("serving %q", got)
	}
}

func TestOpenNone(t *testing.T) {
	b, err := lbopen.Open(context.Background(), nil)
	if b != nil || err != nil {
		t.Errorf("Open(nil) = %v, %v; want no balancer and no error", b, err)
	}
	if _, err := lbopen.Open(context.Background(), &config.LoadBalancer{Type: "nginx"}); err == nil || !strings.Contains(err.Error(), `unknown type "nginx"`) {
		t.Errorf("Open(nginx): %v", err)
	}
}
