package policy

import (
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
)

// Limits bound what one request may ask of the core etcd. The defaults follow etcd's own defaults, counted over a
// whole request where etcd counts per level.
type Limits struct {
	// MaxRequestBytes bounds an encoded request (etcd's --max-request-bytes, 1.5 MiB by default).
	MaxRequestBytes int
	// MaxTxnOps bounds the operations of a Txn, success and failure branches together, and separately its
	// compares (etcd's --max-txn-ops, 128 by default, which etcd applies to each nesting level on its own).
	MaxTxnOps int
	// MaxTxnReads bounds what a Txn reads back: its Range operations (each of one key) and its writes that return
	// the previous value (prev_kv). One key may hold 1.5 MiB, so 127 reads made a 1 KB request answer 190 MiB;
	// kube-apiserver reads at most one key per transaction (the current object, when its compare fails).
	MaxTxnReads int
	// MaxWatchesPerStream bounds the watches open at once on one Watch stream (kube-apiserver keeps every watch
	// of a connection on one stream, one per resource with its watch cache on, one per client watch without).
	MaxWatchesPerStream int
}

// grpcOverhead is the room for gRPC framing above the largest request, as etcd leaves it.
const grpcOverhead = 512 * 1024

// MaxMessageBytes is the largest gRPC message to take in or send for one request: the request limit plus gRPC's
// framing. A message over the request limit but inside this room reaches Check, which refuses it with a reason.
func (l Limits) MaxMessageBytes() int { return l.MaxRequestBytes + grpcOverhead }

// DefaultLimits are etcd's defaults, and room for a busy API server's watches.
var DefaultLimits = Limits{MaxRequestBytes: 1536 * 1024, MaxTxnOps: 128, MaxTxnReads: 4, MaxWatchesPerStream: 10000}

// sized is what every etcd message implements (gogo-generated code).
type sized interface{ Size() int }

// Check returns why the request may not go to the core etcd, or nil when it may. It never panics, whatever the
// message holds: nil fields, unknown enum values and empty oneofs are all refusals, not crashes.
func (l Limits) Check(request any) *Refusal {
	if message, ok := request.(sized); ok && l.MaxRequestBytes > 0 {
		if size := message.Size(); size > l.MaxRequestBytes {
			return refuse(RequestTooLarge, codes.ResourceExhausted,
				"request of %d bytes is over the limit of %d bytes", size, l.MaxRequestBytes)
		}
	}
	switch r := request.(type) {
	case *pb.RangeRequest:
		return checkRange(r, "request")
	case *pb.TxnRequest:
		return l.checkTxn(r)
	case *pb.LeaseGrantRequest:
		if r.ID != 0 {
			return refuse(ChosenLeaseID, codes.InvalidArgument,
				"LeaseGrant with a chosen ID (%d) is not allowed: leave ID 0 and let etcd choose, "+
					"lease IDs are shared by every tenant and the core cluster", r.ID)
		}
	case *pb.WatchRequest:
		return checkWatch(r)
	}
	return nil
}

// Txn: kube-apiserver sends compare-and-swap transactions on one key (compare its revision, then put or delete
// it, else read it). Anything wider runs inside the core's apply loop, where every member executes it while all
// writes of the cluster wait: no nested Txn, no ranges (a Txn reads and compares single keys), bounded counts.
func (l Limits) checkTxn(txn *pb.TxnRequest) *Refusal {
	if ops := len(txn.Success) + len(txn.Failure); l.MaxTxnOps > 0 && ops > l.MaxTxnOps {
		return refuse(TooManyOps, codes.ResourceExhausted,
			"Txn with %d operations is over the limit of %d (success and failure together)", ops, l.MaxTxnOps)
	}
	if l.MaxTxnOps > 0 && len(txn.Compare) > l.MaxTxnOps {
		return refuse(TooManyOps, codes.ResourceExhausted,
			"Txn with %d compares is over the limit of %d", len(txn.Compare), l.MaxTxnOps)
	}
	if reads := txnReads(txn); l.MaxTxnReads > 0 && reads > l.MaxTxnReads {
		return refuse(TooManyReads, codes.ResourceExhausted,
			"Txn reads %d keys (Range operations and prev_kv), over the limit of %d", reads, l.MaxTxnReads)
	}
	for i, compare := range txn.Compare {
		if refusal := checkCompare(compare, fmt.Sprintf("compare[%d]", i)); refusal != nil {
			return refusal
		}
	}
	for _, branch := range []struct {
		name string
		ops  []*pb.RequestOp
	}{{"success", txn.Success}, {"failure", txn.Failure}} {
		for i, op := range branch.ops {
			if refusal := checkOp(op, fmt.Sprintf("%s[%d]", branch.name, i)); refusal != nil {
				return refusal
			}
		}
	}
	return nil
}

// txnReads counts the operations of a Txn that answer stored values (nested Txns are refused on their own).
func txnReads(txn *pb.TxnRequest) int {
	reads := 0
	for _, ops := range [][]*pb.RequestOp{txn.Success, txn.Failure} {
		for _, op := range ops {
			switch r := op.GetRequest().(type) {
			case *pb.RequestOp_RequestRange:
				reads++
			case *pb.RequestOp_RequestPut:
				if r.RequestPut.GetPrevKv() {
					reads++
				}
			case *pb.RequestOp_RequestDeleteRange:
				if r.RequestDeleteRange.GetPrevKv() {
					reads++
				}
			}
		}
	}
	return reads
}

func checkOp(op *pb.RequestOp, where string) *Refusal {
	if op == nil {
		return emptyOp(where)
	}
	switch r := op.Request.(type) {
	case *pb.RequestOp_RequestRange:
		if r.RequestRange == nil {
			return emptyOp(where)
		}
		if len(r.RequestRange.RangeEnd) != 0 {
			return refuse(RangeInTxn, codes.InvalidArgument,
				"Txn reads a range at %s: a Txn may read single keys only, use Range for ranges", where)
		}
		return checkRange(r.RequestRange, where)
	case *pb.RequestOp_RequestPut:
		if r.RequestPut == nil {
			return emptyOp(where)
		}
	case *pb.RequestOp_RequestDeleteRange:
		if r.RequestDeleteRange == nil {
			return emptyOp(where)
		}
	case *pb.RequestOp_RequestTxn:
		return refuse(NestedTxn, codes.InvalidArgument,
			"Txn nests another Txn at %s: nested transactions are not allowed (kube-apiserver never sends them)", where)
	default: // no operation at all, or one this etcd API does not know
		return emptyOp(where)
	}
	return nil
}

func emptyOp(where string) *Refusal {
	return refuse(EmptyOp, codes.InvalidArgument, "Txn operation %s is empty or of an unknown kind", where)
}

// compareTargets pairs each compare target with the value that must come with it.
var compareTargets = map[pb.Compare_CompareTarget]func(any) bool{
	pb.Compare_VERSION: func(u any) bool { _, ok := u.(*pb.Compare_Version); return ok },
	pb.Compare_CREATE:  func(u any) bool { _, ok := u.(*pb.Compare_CreateRevision); return ok },
	pb.Compare_MOD:     func(u any) bool { _, ok := u.(*pb.Compare_ModRevision); return ok },
	pb.Compare_VALUE:   func(u any) bool { _, ok := u.(*pb.Compare_Value); return ok },
	pb.Compare_LEASE:   func(u any) bool { _, ok := u.(*pb.Compare_Lease); return ok },
}

func checkCompare(compare *pb.Compare, where string) *Refusal {
	if compare == nil {
		return refuse(InvalidCompare, codes.InvalidArgument, "Txn %s is empty", where)
	}
	if _, ok := pb.Compare_CompareResult_name[int32(compare.Result)]; !ok {
		return unknown(where+".result", int32(compare.Result))
	}
	matches, ok := compareTargets[compare.Target]
	if !ok {
		return unknown(where+".target", int32(compare.Target))
	}
	if !matches(compare.TargetUnion) {
		return refuse(InvalidCompare, codes.InvalidArgument,
			"Txn %s compares %s without a %s to compare with", where, compare.Target, compare.Target)
	}
	if len(compare.RangeEnd) != 0 {
		return refuse(RangeInTxn, codes.InvalidArgument,
			"Txn %s compares a range: a Txn may compare single keys only", where)
	}
	return nil
}

func checkRange(r *pb.RangeRequest, where string) *Refusal {
	if _, ok := pb.RangeRequest_SortOrder_name[int32(r.SortOrder)]; !ok {
		return unknown(where+".sort_order", int32(r.SortOrder))
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(r.SortTarget)]; !ok {
		return unknown(where+".sort_target", int32(r.SortTarget))
	}
	return nil
}

func checkWatch(r *pb.WatchRequest) *Refusal {
	switch request := r.RequestUnion.(type) {
	case *pb.WatchRequest_CreateRequest:
		if request.CreateRequest == nil {
			break
		}
		for i, filter := range request.CreateRequest.Filters {
			if _, ok := pb.WatchCreateRequest_FilterType_name[int32(filter)]; !ok {
				return unknown(fmt.Sprintf("create_request.filters[%d]", i), int32(filter))
			}
		}
		return nil
	case *pb.WatchRequest_CancelRequest:
		if request.CancelRequest != nil {
			return nil
		}
	case *pb.WatchRequest_ProgressRequest:
		if request.ProgressRequest != nil {
			return nil
		}
	}
	return refuse(EmptyWatchRequest, codes.InvalidArgument,
		"watch request is empty or of an unknown kind (expected create, cancel or progress)")
}

// WatchesExhausted is the refusal of a watch beyond MaxWatchesPerStream.
func (l Limits) WatchesExhausted() *Refusal {
	return refuse(TooManyWatches, codes.ResourceExhausted,
		"%d watches are open on this stream, the limit; cancel some or open another stream", l.MaxWatchesPerStream)
}

func unknown(field string, value int32) *Refusal {
	return refuse(UnknownValue, codes.InvalidArgument, "%s has the unknown value %d", field, value)
}
