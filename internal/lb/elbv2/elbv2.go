// Package elbv2 drains and enables the targets of one AWS Elastic Load
// Balancing v2 target group (ALB or NLB) with aws-sdk-go-v2:
// DescribeTargetHealth for Members, DeregisterTargets for Drain,
// RegisterTargets for Enable.
//
// A member's name is its target id: an instance id (i-0abc...) or an IP
// address; "id:port" when the same id is registered on several ports (and
// accepted for any target). States map to lb.Member as follows:
//
//	initial                 enabled, not healthy yet (registration in progress)
//	healthy                 enabled, healthy
//	unavailable             enabled, healthy (health checks are disabled)
//	unhealthy, unhealthy.draining  enabled, not healthy
//	draining                not enabled, Draining (the deregistration delay)
//	unused                  not enabled, idle (deregistered)
//
// AWS does not report connection counts: Active is always -1, and a drained
// target is idle once AWS ends its deregistration delay. AWS stops listing a
// target once it is deregistered, so the Balancer remembers the targets it
// deregistered and asks for them by name.
//
// Drain refuses to deregister the last healthy target of the group.
package elbv2

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	elb "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"
	"github.com/aws/smithy-go"

	"github.com/drover/drover/internal/lb"
)

// API is the part of *elasticloadbalancingv2.Client the Balancer calls.
type API interface {
	DescribeTargetHealth(ctx context.Context, in *elb.DescribeTargetHealthInput, opts ...func(*elb.Options)) (*elb.DescribeTargetHealthOutput, error)
	RegisterTargets(ctx context.Context, in *elb.RegisterTargetsInput, opts ...func(*elb.Options)) (*elb.RegisterTargetsOutput, error)
	DeregisterTargets(ctx context.Context, in *elb.DeregisterTargetsInput, opts ...func(*elb.Options)) (*elb.DeregisterTargetsOutput, error)
}

// DefaultTimeout bounds each call (with the SDK's retries) unless
// Balancer.Timeout says otherwise.
const DefaultTimeout = 20 * time.Second

// Balancer is one target group.
type Balancer struct {
	// Timeout bounds each method, retries included; New sets DefaultTimeout.
	Timeout time.Duration

	api API
	arn string

	mu           sync.Mutex
	deregistered map[target]bool // targets this Balancer took out
}

type target struct {
	id   string
	port int32
}

func (t target) String() string { return t.id + ":" + strconv.Itoa(int(t.port)) }

func (t target) sdk() types.TargetDescription {
	return types.TargetDescription{Id: aws.String(t.id), Port: aws.Int32(t.port)}
}

// New returns a Balancer for the target group arn, calling api.
func New(api API, targetGroupARN string) *Balancer {
	return &Balancer{Timeout: DefaultTimeout, api: api, arn: targetGroupARN, deregistered: map[target]bool{}}
}

// described is one target with its health.
type described struct {
	t      target
	health types.TargetHealth
}

func (b *Balancer) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if b.Timeout > 0 {
		return context.WithTimeout(ctx, b.Timeout)
	}
	return context.WithCancel(ctx)
}

// describe returns every target of the group and those this Balancer
// deregistered, in a stable order.
func (b *Balancer) describe(ctx context.Context) ([]described, error) {
	out, err := b.api.DescribeTargetHealth(ctx, &elb.DescribeTargetHealthInput{TargetGroupArn: aws.String(b.arn)})
	if err != nil {
		return nil, b.wrap("DescribeTargetHealth", err)
	}
	ds := b.collect(out)
	listed := map[target]bool{}
	for _, d := range ds {
		listed[d.t] = true
	}
	b.mu.Lock()
	var missing []types.TargetDescription
	for t := range b.deregistered {
		if !listed[t] {
			missing = append(missing, t.sdk())
		}
	}
	b.mu.Unlock()
	if len(missing) > 0 {
		out, err := b.api.DescribeTargetHealth(ctx, &elb.DescribeTargetHealthInput{TargetGroupArn: aws.String(b.arn), Targets: missing})
		if err != nil {
			return nil, b.wrap("DescribeTargetHealth", err)
		}
		ds = append(ds, b.collect(out)...)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].t.String() < ds[j].t.String() })
	return ds, nil
}

func (b *Balancer) collect(out *elb.DescribeTargetHealthOutput) []described {
	var ds []described
	for _, d := range out.TargetHealthDescriptions {
		if d.Target == nil || d.Target.Id == nil {
			continue
		}
		x := described{t: target{id: *d.Target.Id, port: aws.ToInt32(d.Target.Port)}}
		if d.TargetHealth != nil {
			x.health = *d.TargetHealth
		}
		ds = append(ds, x)
	}
	return ds
}

// names returns each target's member name: its id, or id:port when the id
// is there on several ports.
func names(ds []described) map[target]string {
	count := map[string]int{}
	for _, d := range ds {
		count[d.t.id]++
	}
	out := map[target]string{}
	for _, d := range ds {
		out[d.t] = d.t.id
		if count[d.t.id] > 1 {
			out[d.t] = d.t.String()
		}
	}
	return out
}

func member(name string, d described) lb.Member {
	m := lb.Member{Name: name, Active: -1, Detail: string(d.health.State)}
	if d.health.Reason != "" {
		m.Detail += ": " + string(d.health.Reason)
	}
	switch d.health.State {
	case types.TargetHealthStateEnumHealthy, types.TargetHealthStateEnumUnavailable:
		m.Enabled, m.Healthy = true, true
	case types.TargetHealthStateEnumInitial, types.TargetHealthStateEnumUnhealthy, types.TargetHealthStateEnumUnhealthyDraining:
		m.Enabled = true
	case types.TargetHealthStateEnumDraining:
		m.Draining = true
	}
	return m
}

// Members returns every target of the group (and those this Balancer
// deregistered) with its health.
func (b *Balancer) Members(ctx context.Context) ([]lb.Member, error) {
	ctx, cancel := b.bound(ctx)
	defer cancel()
	ds, err := b.describe(ctx)
	if err != nil {
		return nil, err
	}
	n := names(ds)
	ms := make([]lb.Member, 0, len(ds))
	for _, d := range ds {
		ms = append(ms, member(n[d.t], d))
	}
	return ms, nil
}

// lookup describes the group and resolves a member name in it: ok is false
// when no target has that name.
func (b *Balancer) lookup(ctx context.Context, name string) (ds []described, d described, ok bool, err error) {
	ds, err = b.describe(ctx)
	if err != nil {
		return nil, d, false, err
	}
	n := names(ds)
	var hits []described
	for _, x := range ds {
		if n[x.t] == name || x.t.String() == name || x.t.id == name {
			hits = append(hits, x)
		}
	}
	switch len(hits) {
	case 0:
		return ds, d, false, nil
	case 1:
		return ds, hits[0], true, nil
	}
	return nil, d, false, fmt.Errorf("elbv2 target group %s: %q is registered on several ports; name the member id:port in lb_name", b.arn, name)
}

// Drain deregisters the target; AWS keeps it draining for the target
// group's deregistration delay. It refuses to take out the last healthy
// target, and does nothing when the target is already draining or out.
func (b *Balancer) Drain(ctx context.Context, name string) error {
	ctx, cancel := b.bound(ctx)
	defer cancel()
	ds, d, ok, err := b.lookup(ctx, name)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("elbv2 target group %s: target %q: %w (it is not registered; lb_name must be the target id, like i-0abc or 10.0.0.5)", b.arn, name, lb.ErrUnknownMember)
	}
	switch d.health.State {
	case types.TargetHealthStateEnumDraining, types.TargetHealthStateEnumUnused:
		return nil
	case types.TargetHealthStateEnumHealthy:
		others := 0
		for _, o := range ds {
			if o.t != d.t && o.health.State == types.TargetHealthStateEnumHealthy {
				others++
			}
		}
		if others == 0 {
			return fmt.Errorf("elbv2 target group %s: refusing to deregister %s: it is the last healthy target, the group would serve nothing; make another target healthy first", b.arn, name)
		}
	}
	if _, err := b.api.DeregisterTargets(ctx, &elb.DeregisterTargetsInput{TargetGroupArn: aws.String(b.arn), Targets: []types.TargetDescription{d.t.sdk()}}); err != nil {
		return b.wrap("DeregisterTargets "+d.t.String(), err)
	}
	b.mu.Lock()
	b.deregistered[d.t] = true
	b.mu.Unlock()
	return nil
}

// Enable registers the target again; it serves once the target group's
// health checks pass. A target that is registered (initial, healthy,
// unhealthy) is left alone.
func (b *Balancer) Enable(ctx context.Context, name string) error {
	ctx, cancel := b.bound(ctx)
	defer cancel()
	_, d, ok, err := b.lookup(ctx, name)
	if err != nil {
		return err
	}
	if !ok {
		// Not registered and not deregistered by this Balancer (drover
		// restarted since): ask AWS about it by name.
		d.t = parseName(name)
		out, err := b.api.DescribeTargetHealth(ctx, &elb.DescribeTargetHealthInput{TargetGroupArn: aws.String(b.arn), Targets: []types.TargetDescription{d.t.sdkMaybePort()}})
		var ae smithy.APIError
		if errors.As(err, &ae) && ae.ErrorCode() == "InvalidTarget" {
			return fmt.Errorf("elbv2 target group %s: target %q: %w (AWS: %s)", b.arn, name, lb.ErrUnknownMember, ae.ErrorMessage())
		}
		if err != nil {
			return b.wrap("DescribeTargetHealth "+name, err)
		}
		if got := b.collect(out); len(got) == 1 {
			d = got[0]
		}
	}
	switch d.health.State {
	case types.TargetHealthStateEnumDraining, types.TargetHealthStateEnumUnused, "":
	default:
		return nil
	}
	t := d.t.sdkMaybePort()
	if _, err := b.api.RegisterTargets(ctx, &elb.RegisterTargetsInput{TargetGroupArn: aws.String(b.arn), Targets: []types.TargetDescription{t}}); err != nil {
		return b.wrap("RegisterTargets "+name, err)
	}
	return nil
}

// parseName reads "id" or "id:port" (IPv4 or instance id).
func parseName(name string) target {
	if id, p, ok := strings.Cut(name, ":"); ok {
		if n, err := strconv.ParseInt(p, 10, 32); err == nil {
			return target{id: id, port: int32(n)}
		}
	}
	return target{id: name}
}

// sdkMaybePort leaves the port out when unknown: AWS uses the group's.
func (t target) sdkMaybePort() types.TargetDescription {
	if t.port == 0 {
		return types.TargetDescription{Id: aws.String(t.id)}
	}
	return t.sdk()
}

func (b *Balancer) wrap(call string, err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) && ae.ErrorCode() == "TargetGroupNotFound" {
		return fmt.Errorf("elbv2 %s on target group %s: %w (check load_balancer.target_group_arn and region in drover.yml)", call, b.arn, err)
	}
	return fmt.Errorf("elbv2 %s on target group %s: %w", call, b.arn, err)
}

// Open returns a Balancer for the target group arn with credentials from
// the SDK's default chain (environment, shared config and credentials
// files, SSO, the instance or task role). region defaults to the ARN's;
// endpoint, when set, replaces the service's (a VPC endpoint, or a local
// server in tests).
func Open(ctx context.Context, arn, region, endpoint string) (*Balancer, error) {
	if region == "" {
		region = RegionOf(arn)
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(region))
	if err != nil {
		return nil, fmt.Errorf("elbv2 target group %s: AWS configuration: %w", arn, err)
	}
	client := elb.NewFromConfig(cfg, func(o *elb.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
	})
	return New(client, arn), nil
}

// RegionOf returns the region of a target group ARN
// (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID), or "".
func RegionOf(arn string) string {
	f := strings.Split(arn, ":")
	if len(f) < 6 || f[0] != "arn" || f[2] != "elasticloadbalancing" {
		return ""
	}
	return f[3]
}
