// Training utilities: optimisers, gradient clipping, expert dropout (docs/training.md).
#ifndef MOE_TRAIN_TRAIN_HPP
#define MOE_TRAIN_TRAIN_HPP

#include <moe/train/expert_dropout.hpp>
#include <moe/train/gradient_utils.hpp>
#include <moe/train/optimizer.hpp>

#endif  // MOE_TRAIN_TRAIN_HPP
