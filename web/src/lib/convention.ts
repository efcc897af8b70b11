/** One per-token convention, said the same way in both views: each token shows the prediction that
 * produced it (the distribution at the previous position, over this token, this token marked); what
 * happens inside the model at the token's own position (activations, attention) is labelled apart. */
export const PREDICTION_HEADING = "Prediction of this token";
export const PREDICTION_SUB = "made at the previous position";
export const INSIDE_HEADING = "Inside this position";
export const INSIDE_SUB = "activations and attention at this token";
export const NO_PREDICTION = "The first token: nothing comes before it, so no prediction produced it.";
