package config

import (
	"net"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// haproxyNameRE is what HAProxy allows in proxy names.
var haproxyNameRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]+$`)

// lbKeys are the keys of load_balancer each type reads; the others are
// refused for it, so that no key is accepted without effect.
var lbKeys = map[string][]string{
	LBHAProxy: {"type", "socket", "backend", "timeout"},
	LBCommand: {"type", "drain", "enable", "status", "timeout"},
	LBELBv2:   {"type", "target_group_arn", "region", "endpoint", "timeout"},
}

// validateLoadBalancer checks environment p's load_balancer, if any.
func (v *validator) validateLoadBalancer(p string, e *Environment) {
	lb := e.LoadBalancer
	p += ".load_balancer"
	if lb == nil {
		if v.present(p) {
			v.at(p, "load_balancer is empty; give it type: haproxy, command or elbv2 and its keys, or remove it")
		}
		return
	}
	keys, known := lbKeys[lb.Type]
	switch {
	case lb.Type == "":
		v.at(p, "missing required key type (haproxy, command or elbv2)")
		return
	case !known:
		v.at(p+".type", "unknown load balancer type %q; use haproxy, command or elbv2", lb.Type)
		return
	}
	for _, k := range v.keyOrder(p) {
		if !slices.Contains(keys, k) {
			v.at(p+"."+k, "%s does not apply to type %s (its keys: %s)", k, lb.Type, strings.Join(keys[1:], ", "))
		}
	}
	missing := func(key, what string) {
		v.at(p, "missing required key %s (%s)", key, what)
	}
	switch lb.Type {
	case LBHAProxy:
		switch {
		case lb.Socket == "":
			missing("socket", "HAProxy's admin runtime socket: a path like /run/haproxy/admin.sock or tcp:HOST:PORT")
		case strings.HasPrefix(lb.Socket, "tcp:"):
			host, port, err := net.SplitHostPort(strings.TrimPrefix(lb.Socket, "tcp:"))
			if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
				v.at(p+".socket", "%q is not tcp:HOST:PORT, like tcp:127.0.0.1:9999", lb.Socket)
			}
		case !path.IsAbs(strings.TrimPrefix(lb.Socket, "unix:")):
			v.at(p+".socket", "%q must be an absolute path or tcp:HOST:PORT, like /run/haproxy/admin.sock", lb.Socket)
		}
		if lb.Backend == "" {
			missing("backend", "the HAProxy backend whose servers are this environment's hosts")
		} else if !haproxyNameRE.MatchString(lb.Backend) {
			v.at(p+".backend", "%q is not a HAProxy backend name (letters, digits, '-', '_', '.', ':')", lb.Backend)
		}
	case LBCommand:
		for _, c := range []struct{ key, val, what string }{
			{"drain", lb.Drain, "a shell command that takes {{member}} out of the load balancer"},
			{"enable", lb.Enable, "a shell command that puts {{member}} back"},
			{"status", lb.Status, `a shell command printing "NAME up|down|drain [ACTIVE]" per member`},
		} {
			if strings.TrimSpace(c.val) == "" {
				missing(c.key, c.what)
			}
		}
	case LBELBv2:
		f := strings.Split(lb.TargetGroupARN, ":")
		switch {
		case lb.TargetGroupARN == "":
			missing("target_group_arn", "arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID")
		case len(f) < 6 || f[0] != "arn" || f[2] != "elasticloadbalancing" || !strings.HasPrefix(f[5], "targetgroup/"):
			v.at(p+".target_group_arn", "%q is not a target group ARN (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)", lb.TargetGroupARN)
		case f[3] == "" && lb.Region == "":
			v.at(p, "missing required key region: the ARN names none")
		}
		if lb.Endpoint != "" {
			if u, err := url.Parse(lb.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				v.at(p+".endpoint", "%q is not an http:// or https:// URL", lb.Endpoint)
			}
		}
	}
	if lb.Timeout <= 0 && slices.Contains(v.keyOrder(p), "timeout") {
		v.at(p+".timeout", "must be more than 0, like 30s")
	}
}
