// moe: sparse Mixture-of-Experts layers. The umbrella header includes the stages in the
// order a layer runs them:
//   1 route -> 2 plan -> 3 gather -> 4 experts -> 5 combine -> 6 losses
#ifndef MOE_MOE_HPP
#define MOE_MOE_HPP

#include <moe/core/concepts.hpp>
#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/core/workspace.hpp>
#include <moe/kernels/kernels.hpp>

#include <moe/router/gating.hpp>           // 1 route
#include <moe/router/routing_result.hpp>
#include <moe/router/top_k_router.hpp>
#include <moe/router/noisy_top_k_router.hpp>
#include <moe/router/expert_choice_router.hpp>
#include <moe/router/hash_router.hpp>
#include <moe/router/soft_router.hpp>
#include <moe/router/jitter.hpp>
#include <moe/dispatch/dispatch_plan.hpp>  // 2 plan
#include <moe/dispatch/statistics.hpp>
#include <moe/gather/gather.hpp>           // 3 gather
#include <moe/expert/ffn_experts.hpp>      // 4 experts
#include <moe/expert/gpt_oss_experts.hpp>
#include <moe/expert/run_experts.hpp>
#include <moe/expert/swiglu_experts.hpp>
#include <moe/combine/shared_expert_combiner.hpp>  // 5 combine
#include <moe/combine/soft_combiner.hpp>
#include <moe/combine/weighted_sum_combiner.hpp>
#include <moe/loss/load_balancing_loss.hpp>  // 6 losses
#include <moe/loss/z_loss.hpp>
#include <moe/loss/importance_loss.hpp>
#include <moe/loss/bias_balancing.hpp>
#include <moe/loss/loss_weights.hpp>

#include <moe/layer/backward.hpp>
#include <moe/layer/moe_layer.hpp>

#endif  // MOE_MOE_HPP
