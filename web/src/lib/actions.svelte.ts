/**
 * "Ablate" and "patch" actions from anywhere in the app (an attention head, a neuron, a flow-graph
 * node, an attribution bar, a feature) land in the Why tab's "Ablate / patch" section: a view calls
 * `requestIntervention(...)`; App switches to the Why tab, WhyView to that section, and
 * WhyIntervene takes the request (`take()`), fills its form and runs it.
 *
 * An Edit is one entry of POST /api/why/intervene's `edits` (server/routes_intervene.py):
 *   ablate  {action: "ablate", hook, mode: zero|mean|resample, index?, positions?, source?}
 *           hook in lmpeek's names: blocks.{l}.attn.hook_z with index = a head, blocks.{l}.mlp.hook_post
 *           with index = a neuron, blocks.{l}.hook_mlp_out / hook_attn_out / hook_resid_pre (whole
 *           vectors; positions = the tokens of an attribution bar), source = the second prompt (resample)
 *   feature {action: "ablate_feature", source_name, index, positions?}  (a features source of the app)
 *   patch   {action: "patch", hook, source, positions?, head?}  (source = prompt B's text)
 *   a direction: {action: "ablate", hook (residual-sized), mode, direction, positions?, source?}: only the
 *           component along a neuron's output vector, a feature's decoder row or a text's activation at a
 *           node (AblateDirection)
 *
 * "steer…" actions (a flow-graph node) land in the Steering section the same way: `requestSteering`,
 * `steeringSerial`, `takeSteering` (WhySteering takes it, fills its form; the user presses Run).
 */
import type { DirectionFeature, DirectionNeuron, DirectionNode, SteerRequest } from "./api-types";

/** What a direction ablation removes the component along (server: routes_intervene.AblateDirection). */
export type AblateDirection = DirectionNeuron | DirectionFeature | DirectionNode;
export interface Edit {
  action: "ablate" | "ablate_feature" | "patch";
  hook?: string;
  mode?: "zero" | "mean" | "resample";
  index?: number | null;
  head?: number | null;
  positions?: number[] | null;
  /** resample / patch: prompt B's text */
  source?: string | null;
  /** ablate_feature: the features source (as GET /api/features/sources names it) */
  source_name?: string;
  /** what the action was taken on, for the list ("head 3.1", "bar ' Paris'") */
  label?: string;
  /** ablate: only the component along this direction (hook: a residual-sized point) */
  direction?: AblateDirection;
}

export interface InterventionRequest {
  /** the text to run (the view's text or trace text) */
  text: string;
  edits: Edit[];
  /** run at once (an action button) or only fill the form */
  run: boolean;
}

const box = $state<{ request: InterventionRequest | null; serial: number; last: "intervene" | "steering" | null }>({ request: null, serial: 0, last: null });

/** Ask the Why tab to run (or prepare) an intervention. */
export function requestIntervention(request: InterventionRequest): void {
  box.request = request;
  box.serial += 1;
  box.last = "intervene";
}

/** Which Why section the latest action asked for (null: none yet); WhyView opens it. */
export function lastAction(): "intervene" | "steering" | null {
  return box.last;
}

/** The pending request's serial number (0: none yet): App and WhyView react to its change. */
export function pendingSerial(): number {
  return box.serial;
}

/** The pending request, once (WhyIntervene takes it). */
export function take(): InterventionRequest | null {
  const r = box.request;
  box.request = null;
  return r;
}

export const headHook = (layer: number) => `blocks.${layer}.attn.hook_z`;
export const neuronHook = (layer: number) => `blocks.${layer}.mlp.hook_post`;

// ---- steering ("steer…" on a flow-graph node)

export interface SteeringRequest {
  /** the prompt to continue (a node direction without its own text is taken from it) */
  text: string;
  direction: SteerRequest["direction"];
}

const steer = $state<{ request: SteeringRequest | null; serial: number }>({ request: null, serial: 0 });

/** Ask the Why tab's Steering section to prepare a steering run (it does not run by itself). */
export function requestSteering(request: SteeringRequest): void {
  steer.request = request;
  steer.serial += 1;
  box.last = "steering";
}

/** The pending steering request's serial (0: none yet): App and WhyView react to its change. */
export function steeringSerial(): number {
  return steer.serial;
}

/** The pending steering request, once (WhySteering takes it). */
export function takeSteering(): SteeringRequest | null {
  const r = steer.request;
  steer.request = null;
  return r;
}
