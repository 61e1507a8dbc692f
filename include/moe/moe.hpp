// moe: sparse Mixture-of-Experts layers. The umbrella header includes the stages in the
// order a layer runs them:
//   1 route -> 2 plan -> 3 gather -> 4 experts -> 5 combine -> 6 losses
// on the contracts between them (include/moe/contracts/, docs/architecture.md).
#ifndef MOE_MOE_HPP
#define MOE_MOE_HPP

#include <moe/contracts/combine.hpp>       // the data between stages, and the policy concepts
#include <moe/contracts/concepts.hpp>
#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/executor.hpp>
#include <moe/contracts/expert.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/slot_layout.hpp>
#include <moe/contracts/statistics.hpp>
#include <moe/contracts/training.hpp>
#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/kernels.hpp>

#include <moe/router/gating.hpp>           // 1 route
#include <moe/router/top_k_router.hpp>
#include <moe/router/noisy_top_k_router.hpp>
#include <moe/router/expert_choice_router.hpp>
#include <moe/router/hash_router.hpp>
#include <moe/router/hierarchical_router.hpp>
#include <moe/router/soft_router.hpp>
#include <moe/router/router_wrapper.hpp>
#include <moe/router/jitter.hpp>
#include <moe/router/modality_router.hpp>
#include <moe/router/domain_aware_router.hpp>
#include <moe/router/task_aware_router.hpp>
#include <moe/router/sequence_router.hpp>
#include <moe/dispatch/dispatch_plan.hpp>  // 2 plan
#include <moe/dispatch/reroute.hpp>        // 2 plan: overflow rerouting (optional)
#include <moe/dispatch/routing_tape.hpp>   // 1-2 recorded or replayed (optional)
#include <moe/dispatch/slot_plan.hpp>
#include <moe/dispatch/statistics.hpp>
#include <moe/dispatch/telemetry.hpp>  // 6 telemetry (optional)
#include <moe/gather/gather.hpp>           // 3 gather
#include <moe/gather/gather_slots.hpp>
#include <moe/expert/conv_experts.hpp>     // 4 experts
#include <moe/expert/ffn_experts.hpp>
#include <moe/expert/gpt_oss_experts.hpp>
#include <moe/expert/gru_experts.hpp>
#include <moe/expert/linear_experts.hpp>
#include <moe/expert/local_executor.hpp>
#include <moe/expert/low_rank_experts.hpp>
#include <moe/expert/position_scaled_experts.hpp>
#include <moe/expert/swiglu_experts.hpp>
#include <moe/combine/shared_expert_combiner.hpp>  // 5 combine
#include <moe/combine/soft_combiner.hpp>
#include <moe/combine/weighted_sum_combiner.hpp>
#include <moe/loss/load_balancing_loss.hpp>  // 6 losses
#include <moe/loss/z_loss.hpp>
#include <moe/loss/importance_loss.hpp>
#include <moe/loss/bias_balancing.hpp>
#include <moe/loss/modality_balancing_loss.hpp>
#include <moe/loss/domain_loss.hpp>
#include <moe/loss/hierarchical_balancing_loss.hpp>
#include <moe/loss/routing_entropy_loss.hpp>
#include <moe/loss/capacity_loss.hpp>
#include <moe/loss/loss_list.hpp>
#include <moe/loss/loss_weights.hpp>

#include <moe/layer/backward.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/layer/multi_head_layer.hpp>
#include <moe/layer/recurrent_moe.hpp>
#include <moe/layer/workspace.hpp>

#include <moe/deploy/prune.hpp>  // expert pruning (docs/pruning.md)
#include <moe/store/expert_cache.hpp>          // experts on disk: the cache and the executor (docs/store.md);
#include <moe/store/on_demand_executor.hpp>    // the sources that read them are moe::io's
#include <moe/store/on_demand_swiglu.hpp>      // (io/expert_source.hpp)

#endif  // MOE_MOE_HPP
